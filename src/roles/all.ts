/**
 * `RUN_SERVICE=All`: every role in one process on the embedded store, wired
 * through their in-process client implementations. This is the composition
 * root; the roles themselves never import each other. With
 * `GATEWAY_WORKERS` over 1, the other gateways of the group are processes
 * that reach this one's state service, scheduler and node agent over gRPC
 * on the loopback.
 *
 * @module
 */
import type { Config } from "../common/config.ts";
import { logger } from "../common/log.ts";
import * as gateway from "../gateway/mod.ts";
import * as nodeagent from "../nodeagent/mod.ts";
import * as scheduler from "../scheduler/mod.ts";
import * as statesvc from "../statesvc/mod.ts";
import { applySamples } from "../statesvc/samples.ts";
import { Registry } from "prom-client";
import { buildNgramImage, imageExists, NGRAM_IMAGE } from "../samples/ngram/image.ts";
import { openAudit, startPodAudit } from "../audit/mod.ts";
import {
  gatewayOptions,
  nodeAgentConfig,
  type RoleHandle,
  schedulerOptions,
  Started,
} from "./_shared.ts";
import { bothStopped, type Members, planGroup, startMembers } from "./_gateway_group.ts";
import { serveMeta } from "../rpc/meta_grpc.ts";
import { serveScheduler } from "../rpc/scheduler_grpc.ts";
import { serveNodeAgent } from "../rpc/nodeagent_grpc.ts";
import type { GrpcServerHandle } from "../rpc/meta_grpc.ts";

/** The running all-in-one platform. */
export interface AllHandle extends RoleHandle {
  port: number;
}

/**
 * Starts state service, node agent, scheduler and gateway, in that order;
 * stops them in the reverse order, and so what it had started when a step
 * fails.
 */
export async function start(config: Config): Promise<AllHandle> {
  if (config.cluster.etcdAddrs) {
    logger().warning(
      "ETCD_ADDRS is set but All runs on its embedded store: etcd is for the roles run apart",
    );
  }
  const started = new Started();
  const port = await started.run(async (on) => {
    const state = on.add(await statesvc.start({ dataDir: config.dataDir }), (s) => s.stop());
    const meta = state.service;
    if (config.samplesDir) await applySamples(meta, config.samplesDir);
    const audit = on.add(openAudit(config), (a) => a.close());
    on.add(await startPodAudit(meta, audit), (a) => a.stop());
    const node = on.add(
      await nodeagent.start(await nodeAgentConfig(config, meta)),
      (n) => n.stop(),
    );
    if (config.samplesDir && node.runtime === "docker" && !await imageExists(NGRAM_IMAGE)) {
      logger().info("Building the sample image {tag} (no registry needed)", { tag: NGRAM_IMAGE });
      await buildNgramImage();
    }
    // Its gateways restart with it: no lease outlives it, so rebuilt pods wait for no one.
    const sched = on.add(
      await scheduler.start({ meta, ...schedulerOptions(config), recoveryGraceMs: 0 }),
      (s) => s.stop(),
    );
    const schedulerMetrics = new Registry();
    sched.service.registerMetrics(schedulerMetrics);
    const group = planGroup(config.gateway.workers ?? 1);
    const inner: GrpcServerHandle[] = [];
    // Asked of every call to the inner services: any local process (a worker of the process
    // runtime among them) reaches the loopback and could write any record through them.
    const clusterToken = config.cluster.clusterToken ?? group?.token;
    if (group) {
      const serve = async (server: Promise<GrpcServerHandle>) =>
        inner.push(on.add(await server, (s) => s.stop()));
      await serve(serveMeta(meta, "127.0.0.1:0", { clusterToken }));
      await serve(serveScheduler(sched.service, "127.0.0.1:0", "all", clusterToken));
      await serve(serveNodeAgent(node.agent, "127.0.0.1:0", clusterToken));
      await node.agent.setAgentAddr(`127.0.0.1:${inner[2].port}`);
    }
    // The group's members stop with this gateway, all draining at once: stopped one after the
    // other, this one took new calls (every new connection, once the members closed their
    // listeners) through their drain, and the group took two drains to stop.
    let members: Members | undefined;
    const gw = on.add(
      await gateway.start({
        meta,
        scheduler: sched.service,
        extraRegistries: [schedulerMetrics],
        nodeAgent: (n) => n.name === node.agent.name ? node.agent : undefined,
        ...gatewayOptions(config, group?.ports.length),
        audit,
        group,
      }),
      (g) => bothStopped(members?.stop(), g.stop()),
    );
    if (group) {
      members = startMembers(group, {
        STATESVC_ADDR: `127.0.0.1:${inner[0].port}`,
        SCHEDULER_ADDR: `127.0.0.1:${inner[1].port}`,
        // In the environment, not on the command line, where any local user could read it.
        INFERX_CLUSTER_TOKEN: clusterToken!,
      }, config.gateway.drainS * 1000);
    }
    return gw.port;
  });
  return { port, stop: () => started.stop() };
}
