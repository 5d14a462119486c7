/**
 * `RUN_SERVICE=Scheduler`: one scheduler replica. It reaches the state
 * service over gRPC (`STATESVC_ADDR`), serves `SchedulerService` and its HTTP
 * app, and, with `ETCD_ADDRS`, campaigns for leadership; the elected replica
 * schedules, the others answer UNAVAILABLE until they win.
 *
 * @module
 */
import { Registry } from "prom-client";
import type { Config } from "../common/config.ts";
import { newId } from "../common/ids.ts";
import { logger } from "../common/log.ts";
import { hostPort, listening } from "../common/net.ts";
import { GrpcMetaClient } from "../rpc/meta_grpc.ts";
import { serveScheduler } from "../rpc/scheduler_grpc.ts";
import { createSchedulerApp } from "../scheduler/http.ts";
import { type Campaign, campaign, leaderOnly } from "../scheduler/leader.ts";
import { SchedulerService } from "../scheduler/mod.ts";
import { type RoleHandle, schedulerOptions, warnOpenPeers } from "./_shared.ts";

/** Starts one scheduler replica. */
export async function start(config: Config): Promise<RoleHandle> {
  const log = logger("scheduler");
  const { bindHost, etcdAddrs, statesvcAddr, clusterToken } = config.cluster;
  warnOpenPeers(config, "SCHEDULER_PORT");
  const meta = new GrpcMetaClient(statesvcAddr, { clusterToken });
  // Crash-only, as the other roles: one that cannot reach the state service at its start exits,
  // rather than stand for election, healthy by its /health, and fail only once it has won.
  try {
    await meta.list("node");
  } catch (err) {
    meta.close();
    throw err;
  }
  const id = newId("sched", 4);
  let leader: SchedulerService | undefined;
  const server = await listening(
    "SCHEDULER_PORT",
    bindHost,
    config.scheduler.port,
    () =>
      serveScheduler(
        leaderOnly(id, () => leader),
        hostPort(bindHost, config.scheduler.port),
        id,
        clusterToken,
      ),
  );
  const registry = new Registry();
  const lead = async () => {
    const service = new SchedulerService(meta, schedulerOptions(config));
    await service.start();
    service.registerMetrics(registry);
    leader = service;
    log.info("Scheduler {id} leads, SchedulerService on {host}:{port}", {
      id,
      host: bindHost,
      port: server.port,
    });
  };
  const app = createSchedulerApp({
    id,
    leader: () => leader,
    registry,
    adminApiKey: config.gateway.adminApiKey,
    metricsKey: config.gateway.metricsKey,
    authEnabled: config.gateway.adminApiKey !== undefined || config.gateway.oidc !== undefined,
  });
  const http = listening(
    "SCHEDULER_HTTP_PORT",
    bindHost,
    config.scheduler.httpPort,
    () =>
      Deno.serve({ port: config.scheduler.httpPort, hostname: bindHost, onListen() {} }, app.fetch),
  );
  let election: Campaign | undefined;
  if (etcdAddrs) {
    log.info("Scheduler {id} campaigning for leadership", { id });
    election = campaign(etcdAddrs, id, {
      onElected() {
        lead().catch((err) => {
          log.fatal("Scheduler {id} cannot start leading: {error}", { id, error: String(err) });
          Deno.exit(1);
        });
      },
      onLost(err) {
        // Crash-only: a replica that may have lost its lease must not act on.
        log.fatal("Scheduler {id} lost its campaign: {error}", { id, error: err.message });
        Deno.exit(1);
      },
    });
  } else {
    // No election without etcd: every replica started so leads, each placing pods on its own.
    log.warning(
      "Scheduler {id} leads without an election (ETCD_ADDRS is unset): run one replica only",
      { id },
    );
    await lead();
  }
  return {
    async stop() {
      leader?.stop();
      await server.stop();
      await http.shutdown();
      await election?.stop();
      meta.close();
    },
  };
}
