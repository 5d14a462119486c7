/**
 * Composition roots of the distributed roles: each runs one role in its own
 * process and reaches the others over gRPC (`STATESVC_ADDR`,
 * `SCHEDULER_ADDR`); the state service keeps metadata in etcd
 * (`ETCD_ADDRS`). Scheduler replicas elect a leader on an etcd lease; the
 * others answer UNAVAILABLE until they win.
 *
 * @module
 */
import { Etcd3 } from "etcd3";
import { Registry } from "prom-client";
import { type EnvConfig, loadNodeConfig, REPO_ROOT } from "../common/config.ts";
import { InferxError } from "../common/errors.ts";
import { newId } from "../common/ids.ts";
import { logger } from "../common/log.ts";
import * as gateway from "../gateway/mod.ts";
import * as nodeagent from "../nodeagent/mod.ts";
import { GrpcMetaClient, serveMeta } from "../rpc/meta_grpc.ts";
import { GrpcNodeAgentClient, serveNodeAgent } from "../rpc/nodeagent_grpc.ts";
import { GrpcSchedulerClient, serveScheduler } from "../rpc/scheduler_grpc.ts";
import type { Lease, LeaseRequest, SchedulerClient } from "../rpc/types.ts";
import { SchedulerService } from "../scheduler/mod.ts";
import * as statesvc from "../statesvc/mod.ts";
import { applySamples } from "../statesvc/samples.ts";
import { openEtcdStore } from "../store/etcd.ts";
import { openAudit, startPodAudit } from "../audit/mod.ts";

/** A running role. */
export interface RoleHandle {
  stop(): Promise<void>;
}

/** `RUN_SERVICE=StateSvc`: the store (etcd, or embedded) behind `IxMetaService`. */
export async function startStateSvc(env: EnvConfig): Promise<RoleHandle> {
  const store = env.etcdAddrs ? await openEtcdStore(env.etcdAddrs) : undefined;
  const state = await statesvc.start({ store, dataDir: env.dataDir });
  if (env.samplesDir) await applySamples(state.service, env.samplesDir);
  // The one state service sees every pod change: it writes the pod audit.
  const audit = openAudit(env);
  const podAudit = await startPodAudit(state.service, audit);
  const server = await serveMeta(state.service, `${env.bindHost}:${env.statesvcPort}`);
  logger("statesvc").info("IxMetaService on {host}:{port} ({store})", {
    host: env.bindHost,
    port: server.port,
    store: env.etcdAddrs ? `etcd ${env.etcdAddrs}` : "embedded",
  });
  return {
    async stop() {
      await server.stop();
      podAudit.stop();
      await audit.close();
      await state.stop();
    },
  };
}

/** `RUN_SERVICE=Scheduler`: one replica; the elected leader schedules. */
export async function startScheduler(env: EnvConfig): Promise<RoleHandle> {
  const log = logger("scheduler");
  const meta = new GrpcMetaClient(env.statesvcAddr);
  const id = newId("sched", 4);
  let leader: SchedulerService | undefined;
  const notLeader = () =>
    Promise.reject(
      new InferxError("unavailable", `Scheduler ${id} is not the leader`, { retryable: true }),
    );
  const gate: SchedulerClient = {
    leaseWorker: (req: LeaseRequest, signal?: AbortSignal): Promise<Lease> =>
      leader ? leader.leaseWorker(req, signal) : notLeader(),
    returnWorker: (req) => leader ? leader.returnWorker(req) : notLeader(),
    refreshGateway: (gw, pods) => leader ? leader.refreshGateway(gw, pods) : notLeader(),
    killPod: (podId) => leader ? leader.killPod(podId) : notLeader(),
  };
  const server = await serveScheduler(gate, `${env.bindHost}:${env.schedulerPort}`, id);
  const registry = new Registry();
  const lead = async () => {
    const service = new SchedulerService(meta, {
      gatewayTimeoutMs: env.gatewayTimeoutMs,
      nodeTimeoutMs: env.nodeTimeoutMs,
      snapshotStart: env.snapshots.start,
    });
    await service.start();
    service.registerMetrics(registry);
    leader = service;
    log.info("Scheduler {id} leads, SchedulerService on {host}:{port}", {
      id,
      host: env.bindHost,
      port: server.port,
    });
  };
  const http = Deno.serve({
    port: env.schedulerHttpPort,
    hostname: env.bindHost,
    onListen() {},
  }, (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/health") {
      return Response.json({ status: "ok", id, leader: leader !== undefined });
    }
    if (path === "/state" && leader) return Response.json({ id, ...leader.snapshot() });
    if (path === "/metrics") {
      return registry.metrics().then((text) =>
        new Response(text, { headers: { "content-type": registry.contentType } })
      );
    }
    if (path === "/state") {
      return Response.json({
        error: { code: "unavailable", message: `Scheduler ${id} is not the leader` },
      }, {
        status: 503,
      });
    }
    return Response.json({ error: { code: "not_found", message: `No route for ${path}` } }, {
      status: 404,
    });
  });
  let etcd: Etcd3 | undefined;
  if (env.etcdAddrs) {
    etcd = new Etcd3({ hosts: env.etcdAddrs.split(",") });
    const campaign = etcd.election("inferx-scheduler", 3).campaign(id);
    log.info("Scheduler {id} campaigning for leadership", { id });
    campaign.on("elected", () => {
      lead().catch((err) => {
        log.fatal("Scheduler {id} cannot start leading: {error}", { id, error: String(err) });
        Deno.exit(1);
      });
    });
    campaign.on("error", (err: Error) => {
      // Crash-only: a replica that may have lost its lease must not act on.
      log.fatal("Scheduler {id} lost its campaign: {error}", { id, error: err.message });
      Deno.exit(1);
    });
  } else {
    await lead();
  }
  return {
    async stop() {
      leader?.stop();
      await server.stop();
      await http.shutdown();
      etcd?.close();
      meta.close();
    },
  };
}

/** `RUN_SERVICE=Gateway`: HTTP on `GATEWAY_PORT`, state service and scheduler over gRPC. */
export async function startGateway(env: EnvConfig): Promise<RoleHandle> {
  const meta = new GrpcMetaClient(env.statesvcAddr);
  const scheduler = new GrpcSchedulerClient(env.schedulerAddrs);
  const agents = new Map<string, GrpcNodeAgentClient>();
  await Deno.mkdir(env.dataDir, { recursive: true });
  const audit = openAudit(env);
  const gw = await gateway.start({
    meta,
    scheduler,
    nodeAgent(node) {
      if (!node.agentAddr) return undefined;
      let c = agents.get(node.agentAddr);
      if (!c) agents.set(node.agentAddr, c = new GrpcNodeAgentClient(node.agentAddr));
      return c;
    },
    port: env.gatewayPort,
    hostname: env.gatewayHost,
    bodyLimit: env.bodyLimit,
    adminApiKey: env.adminApiKey,
    oidc: env.oidc,
    audit,
  });
  return {
    async stop() {
      await gw.stop();
      await audit.close();
      for (const c of agents.values()) c.close();
      scheduler.close();
      meta.close();
    },
  };
}

/** `RUN_SERVICE=NodeAgent`: this node's pods through the state service. */
export async function startNodeAgent(env: EnvConfig): Promise<RoleHandle> {
  const meta = new GrpcMetaClient(env.statesvcAddr);
  const node = await loadNodeConfig(env.nodeConfigPath);
  await Deno.mkdir(env.dataDir, { recursive: true });
  const agent = await nodeagent.start({
    meta,
    node,
    workDir: REPO_ROOT,
    snapshotDir: `${env.dataDir}/snapshots`,
    snapshotSettings: env.snapshots,
    scope: `${node.name}@${await Deno.realPath(env.dataDir)}`,
  });
  const server = await serveNodeAgent(agent.agent, `${env.bindHost}:${env.nodeagentPort}`);
  await agent.agent.setAgentAddr(`${node.address}:${server.port}`);
  logger("nodeagent").info("NodeAgentService of {node} on {host}:{port}", {
    node: node.name,
    host: env.bindHost,
    port: server.port,
  });
  return {
    async stop() {
      await server.stop();
      await agent.stop();
      meta.close();
    },
  };
}
