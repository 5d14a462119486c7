/**
 * `RUN_SERVICE=StateSvc`: the metadata store (etcd with `ETCD_ADDRS`, else
 * the embedded store) behind `IxMetaService`, and the pod audit.
 *
 * @module
 */
import type { Config } from "../common/config.ts";
import { logger } from "../common/log.ts";
import { hostPort, listening } from "../common/net.ts";
import { openAudit, startPodAudit } from "../audit/mod.ts";
import { serveMeta } from "../rpc/meta_grpc.ts";
import * as statesvc from "../statesvc/mod.ts";
import { applySamples } from "../statesvc/samples.ts";
import { openEtcdStore } from "../store/etcd.ts";
import { type RoleHandle, Started, warnOpenPeers } from "./_shared.ts";

/** Starts the state service. */
export async function start(config: Config): Promise<RoleHandle> {
  const { bindHost, etcdAddrs } = config.cluster;
  const started = new Started();
  warnOpenPeers(config, "STATESVC_PORT");
  await started.run(async (on) => {
    const store = etcdAddrs ? await openEtcdStore(etcdAddrs) : undefined;
    // The one writer of the metadata keeps etcd's history bounded (nothing else compacts it).
    store?.startCompaction();
    // Its stop closes the store.
    const state = on.add(
      await statesvc.start({ store, dataDir: config.dataDir }).catch(async (err) => {
        await store?.close();
        throw err;
      }),
      (s) => s.stop(),
    );
    if (config.samplesDir) await applySamples(state.service, config.samplesDir);
    // The one state service sees every pod change: it writes the pod audit.
    const audit = on.add(openAudit(config), (a) => a.close());
    on.add(await startPodAudit(state.service, audit), (a) => a.stop());
    const server = on.add(
      await listening(
        "STATESVC_PORT",
        bindHost,
        config.statesvc.port,
        () =>
          serveMeta(state.service, hostPort(bindHost, config.statesvc.port), {
            clusterToken: config.cluster.clusterToken,
          }),
      ),
      (s) => s.stop(),
    );
    logger("statesvc").info("IxMetaService on {host}:{port} ({store})", {
      host: bindHost,
      port: server.port,
      store: etcdAddrs ? `etcd ${etcdAddrs}` : "embedded",
    });
  });
  return { stop: () => started.stop() };
}
