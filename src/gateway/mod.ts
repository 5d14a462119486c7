/**
 * The `Gateway` role: the HTTP API on its own HTTP/1.1 listener (calls of
 * functions on the warm path, everything else through the Hono app), the
 * function cache and agents, the scale-in sweep and heartbeats to the
 * scheduler.
 *
 * @module
 */
import { newId } from "../common/ids.ts";
import { logger } from "../common/log.ts";
import { hostPort, listening } from "../common/net.ts";
import type { MetaClient, SchedulerClient } from "../rpc/types.ts";
import { createGatewayApp, resolveDeps } from "./app.ts";
import { drainCalls, serveGateway } from "./server.ts";
import type { GatewayGroup } from "./group.ts";
import { FuncCache } from "./func_cache.ts";
import { HttpPool } from "./http_pool.ts";
import { Authenticator } from "./auth.ts";
import { type OidcOptions, OidcVerifier } from "./oidc.ts";
import type { AuditLog } from "../audit/types.ts";
import type { SpillOptions } from "./read_ahead.ts";
import type { CallSettings } from "../common/config.ts";

export { createGatewayApp, type GatewayDeps } from "./app.ts";
import type { GatewayDeps } from "./app.ts";
export { FuncCache } from "./func_cache.ts";

/** Configuration of the gateway role. */
export interface GatewayConfig {
  meta: MetaClient;
  scheduler: SchedulerClient;
  /** @default 4000 */
  port?: number;
  /**
   * At a stop, how long calls under way may take to finish (ms); calls still
   * waiting for a worker are answered 503 at once. @default 10_000
   */
  drainMs?: number;
  /** @default "127.0.0.1" */
  hostname?: string;
  /** Largest request body (bytes). @default 16 MiB */
  bodyLimit?: number;
  /** Request bodies held while they arrive, all together (bytes). @default 256 MiB */
  bodyBufferBytes?: number;
  /** Bytes of streamed answers held read ahead of slow callers, in all. @default 64 MiB */
  readAheadBytes?: number;
  /** Where, and how much, answers read ahead go on disk past memory. @default none */
  spill?: SpillOptions;
  /** Heartbeat period to the scheduler (ms). @default 2000 */
  heartbeatMs?: number;
  /** The client of a node's agent, for pod logs. */
  nodeAgent?: GatewayDeps["nodeAgent"];
  /** More metrics registries to serve at `/metrics`. */
  extraRegistries?: GatewayDeps["extraRegistries"];
  /** The administrator's key; with it (or `oidc`) auth is on. */
  adminApiKey?: string;
  /** A credential for `/metrics` alone (`INFERX_METRICS_KEY`). */
  metricsKey?: string;
  /** Where OIDC bearer tokens are checked. */
  oidc?: OidcOptions;
  /** Where request rows go (the caller closes it). */
  audit?: AuditLog;
  /**
   * This gateway is one of a group sharing the port (SO_REUSEPORT): it
   * serves its metrics to the others and answers `/metrics` for all.
   */
  group?: GatewayGroup;
  /** Asynchronous calls and their callbacks. @default the configuration's defaults */
  calls?: CallSettings;
}

/** A running gateway. */
export interface GatewayHandle {
  /** The port it listens on. */
  port: number;
  stop(): Promise<void>;
}

/** Starts the gateway. */
export async function start(config: GatewayConfig): Promise<GatewayHandle> {
  const gatewayId = newId("gw", 4);
  const auth = new Authenticator({
    adminKey: config.adminApiKey,
    metricsKey: config.metricsKey,
    oidc: config.oidc && new OidcVerifier(config.oidc),
  });
  await auth.start(config.meta);
  const cache = new FuncCache({ scheduler: config.scheduler, gatewayId });
  await cache.start(config.meta);
  const upstream = new HttpPool();
  const deps = resolveDeps({
    meta: config.meta,
    cache,
    upstream,
    bodyLimit: config.bodyLimit,
    bodyBufferBytes: config.bodyBufferBytes,
    readAheadBytes: config.readAheadBytes,
    spill: config.spill,
    nodeAgent: config.nodeAgent,
    extraRegistries: config.extraRegistries,
    auth,
    audit: config.audit,
    gatewayId,
    group: config.group,
    scheduler: config.scheduler,
    calls: config.calls && {
      ttlMs: config.calls.ttlS * 1000,
      maxBytes: config.calls.maxBytes,
      maxAttempts: config.calls.attempts,
      leaseMs: config.calls.leaseS * 1000,
      openMax: config.calls.openMax,
      openMaxBytes: config.calls.openMaxMB * 1024 * 1024,
      keptMax: config.calls.keptMax,
      keptMaxBytes: config.calls.keptMaxMB * 1024 * 1024,
      callbackAllow: config.calls.callbackAllow,
    },
  });
  const app = createGatewayApp(deps);
  await deps.calls.start();
  // Its base first: a member answers nothing of its series before it has it.
  await deps.groupMetrics?.recall();
  const memberMetrics = deps.groupMetrics?.serve();
  const sweep = setInterval(() => {
    const now = performance.now();
    for (const a of cache.agents()) a.sweep(now);
    upstream.sweep(now);
  }, 100);
  const beat = () =>
    config.scheduler.refreshGateway(
      gatewayId,
      cache.leasedPods(),
      cache.load(),
      cache.limits.demand(),
    ).then(
      (advice) => cache.advise(advice),
      (err) =>
        logger("gateway").warn("Cannot reach the scheduler: {error}", { error: String(err) }),
    );
  await beat();
  const heartbeat = setInterval(beat, config.heartbeatMs ?? 2000);
  const port = config.port ?? 4000;
  const hostname = config.hostname ?? "127.0.0.1";
  const server = listening("GATEWAY_HOST, GATEWAY_PORT", hostname, port, () => {
    // The group's first member binds before the others: a port another process holds (another
    // platform's group, which shares it too) is refused, as a single gateway's would be.
    if (config.group?.index === 0) Deno.listen({ hostname, port }).close();
    return serveGateway(app, deps, { port, hostname, reusePort: config.group !== undefined });
  });
  logger("gateway").info("Gateway {id} on http://{address}", {
    id: gatewayId,
    address: hostPort(server.addr.hostname, server.addr.port),
  });
  return {
    port: server.addr.port,
    async stop() {
      // Heartbeats and the pool's sweep go on while calls finish: their leases must hold.
      await Promise.all([
        drainCalls(cache, server, config.drainMs ?? 10_000),
        deps.calls.stop(2_000),
      ]);
      clearInterval(sweep);
      clearInterval(heartbeat);
      cache.stop();
      auth.stop();
      await memberMetrics?.close();
      upstream.close();
      deps.jsonProbe.close();
    },
  };
}
