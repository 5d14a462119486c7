/**
 * What the gateway's routes share: their dependencies and Hono's variables.
 *
 * @module
 */
import type { BodyBudget } from "./http1/body.ts";
import type { JsonProbe } from "./json_probe.ts";
import type { Registry } from "prom-client";
import type { AuditLog } from "../audit/types.ts";
import type { NodeInfo } from "../model/cluster.ts";
import type { MetaClient, NodeAgentClient, SchedulerClient } from "../rpc/types.ts";
import type { Authenticator } from "./auth.ts";
import type { CallQueue } from "./calls/queue.ts";
import type { FuncCache } from "./func_cache.ts";
import type { HttpPool } from "./http_pool.ts";
import type { ReadAheadBudget } from "./read_ahead.ts";
import type { GatewayMetrics } from "./metrics.ts";
import type { GatewayVars } from "./middleware/observe.ts";
import type { GatewayGroup, GroupMetrics } from "./group.ts";

/** The dependencies every route module gets, defaults filled in. */
export interface RouteDeps {
  meta: MetaClient;
  cache: FuncCache;
  pool: HttpPool;
  /** What streamed answers may hold read ahead of slow callers. */
  readAhead: ReadAheadBudget;
  auth: Authenticator;
  metrics: GatewayMetrics;
  /** Every registry `/metrics` serves (the gateway's first). */
  registry: Registry;
  audit?: AuditLog;
  gatewayId: string;
  /** Largest request body (bytes). */
  bodyLimit: number;
  /** Reads large JSON call bodies off the event loop (closed with the gateway). */
  jsonProbe: JsonProbe;
  /** What request bodies read whole may hold while they arrive, all together. */
  bodyBudget: BodyBudget;
  /** The client of a node's agent (for pod logs), or undefined when it has none. */
  nodeAgent?: (node: NodeInfo) => NodeAgentClient | undefined;
  /** The gateways sharing this one's port, when it is one of several (`GATEWAY_WORKERS`). */
  group?: GatewayGroup;
  /** The group's metrics, summed over its members (with `group`). */
  groupMetrics?: GroupMetrics;
  /** The scheduler, for terminating pods; none: pods cannot be terminated here. */
  scheduler?: SchedulerClient;
  /** The durable queue of asynchronous calls. */
  calls: CallQueue;
}

/** The gateway's Hono environment. */
export type GatewayEnv = { Variables: GatewayVars };
