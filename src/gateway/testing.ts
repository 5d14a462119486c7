/**
 * Fakes for the gateway's unit tests: a scripted scheduler, a fixture with
 * one function `t/n/f` on an in-memory store, and workers on free ports.
 *
 * @module
 */
import type { InferxError } from "../common/errors.ts";
import { openSqliteStore } from "../store/sqlite.ts";
import type { MetaStore } from "../store/types.ts";
import { until } from "../common/testing.ts";
import { PRIVATE_PREFIXES } from "../statesvc/mod.ts";
import { StateService } from "../statesvc/service.ts";
import type {
  CallDemand,
  FuncLoad,
  GatewayAdvice,
  Lease,
  LeaseRequest,
  LeaseStage,
  SchedulerClient,
} from "../rpc/types.ts";
import type { AuditLog, AuditQuery, PodRow, RequestRow } from "../audit/types.ts";
import { summarizeUsage } from "../audit/usage.ts";
import { createGatewayApp, type GatewayDeps, resolveDeps } from "./app.ts";
import { Authenticator } from "./auth.ts";
import { FuncCache } from "./func_cache.ts";
import type { GatewayEnv, RouteDeps } from "./types.ts";
import type { Hono } from "hono";

/** A scheduler that hands out scripted endpoints and records calls. */
export class FakeScheduler implements SchedulerClient {
  endpoints: string[] = [];
  leases: LeaseRequest[] = [];
  returns: { podId: string; failed?: boolean }[] = [];
  coldStart = true;
  /** The function version leased workers run. */
  version = 1;
  /** When set, leases never resolve on their own (until aborted). */
  hang = false;
  failWith?: InferxError;
  /** Stages a lease followed with `onProgress` reports before it is answered. */
  stages: LeaseStage[] = [];
  #seq = 0;
  leaseWorker(
    req: LeaseRequest,
    signal?: AbortSignal,
    onProgress?: (stage: LeaseStage) => void,
  ): Promise<Lease> {
    this.leases.push(req);
    for (const s of this.stages) onProgress?.(s);
    if (this.failWith) return Promise.reject(this.failWith);
    if (this.hang || this.endpoints.length === 0) {
      return new Promise((_, reject) =>
        signal?.addEventListener("abort", () => reject(signal.reason))
      );
    }
    const endpoint = this.endpoints.shift()!;
    return Promise.resolve({
      podId: `pod-${++this.#seq}`,
      endpoint,
      coldStart: this.coldStart,
      resumed: false,
      version: req.version ?? this.version,
    });
  }
  returnWorker(req: { podId: string; gatewayId: string; failed?: boolean }): Promise<void> {
    this.returns.push({ podId: req.podId, failed: req.failed });
    return Promise.resolve();
  }
  /** What the next heartbeats are answered with. */
  advice: GatewayAdvice = { reclaim: [], scaleOut: [] };
  /** The load each heartbeat reported. */
  loads: FuncLoad[][] = [];
  /** The calls of tenants with a call rate each heartbeat reported. */
  demands: CallDemand[][] = [];
  refreshGateway(
    _gw: string,
    _pods?: string[],
    load?: FuncLoad[],
    calls?: CallDemand[],
  ): Promise<GatewayAdvice> {
    this.loads.push(load ?? []);
    this.demands.push(calls ?? []);
    return Promise.resolve(this.advice);
  }
  /** Pods terminated through {@linkcode killPod}. */
  kills: string[] = [];
  killPod(podId: string): Promise<void> {
    this.kills.push(podId);
    return Promise.resolve();
  }
}

/** A gateway app over one function `t/n/f` (max_replica 2 plus `policy`). */
export interface GatewayFixture {
  app: Hono<GatewayEnv>;
  deps: RouteDeps;
  sched: FakeScheduler;
  cache: FuncCache;
  meta: StateService;
  /** The state service's store, to write past its checks (what an earlier release left). */
  store: MetaStore;
  audit: MemoryAudit;
  close(): Promise<void>;
}

/** Options of {@linkcode gatewayFixture}. */
export interface FixtureOptions {
  /** Policy fields of `t/n/f`. */
  policy?: Record<string, unknown>;
  /** @default 1024 */
  bodyLimit?: number;
  /** What bodies read whole may hold while they arrive. @default 256 MiB */
  bodyBufferBytes?: number;
  /** Turns auth on with this administrator key. */
  adminKey?: string;
  /** The scrape credential (`INFERX_METRICS_KEY`). */
  metricsKey?: string;
  /** Settings of the asynchronous calls' queue. */
  calls?: GatewayDeps["calls"];
  /** Answers read ahead spill to disk so. */
  spill?: GatewayDeps["spill"];
}

/** Builds a {@linkcode GatewayFixture}. */
export async function gatewayFixture(opts: FixtureOptions = {}): Promise<GatewayFixture> {
  const store = await openSqliteStore(":memory:", { privatePrefixes: PRIVATE_PREFIXES });
  const meta = new StateService(store);
  await meta.create({
    type: "tenant",
    tenant: "system",
    namespace: "system",
    name: "t",
    object: {},
  });
  await meta.create({ type: "namespace", tenant: "t", namespace: "system", name: "n", object: {} });
  await meta.create({
    type: "function",
    tenant: "t",
    namespace: "n",
    name: "f",
    object: { spec: { image: "x", policy: { Obj: { max_replica: 2, ...opts.policy } } } },
  });
  const sched = new FakeScheduler();
  const cache = new FuncCache({ scheduler: sched, gatewayId: "gw-test" });
  await cache.start(meta);
  const auth = new Authenticator({ adminKey: opts.adminKey, metricsKey: opts.metricsKey });
  await auth.start(meta);
  const audit = memoryAudit();
  const deps = resolveDeps({
    meta,
    cache,
    auth,
    audit,
    bodyLimit: opts.bodyLimit ?? 1024,
    bodyBufferBytes: opts.bodyBufferBytes,
    gatewayId: "gw-test",
    scheduler: sched,
    calls: opts.calls,
    spill: opts.spill,
  });
  const app = createGatewayApp(deps);
  await deps.calls.start();
  return {
    app,
    deps,
    sched,
    cache,
    meta,
    store,
    audit,
    close: async () => {
      await deps.calls.stop(0);
      cache.stop();
      auth.stop();
      deps.pool.close();
      deps.jsonProbe.close();
      await store.close();
    },
  };
}

/**
 * Registers function `tenant/namespace/name` (its namespace there already)
 * in the fixture's store and waits until the gateway's cache has it.
 */
export async function addFunction(
  f: GatewayFixture,
  tenant: string,
  namespace: string,
  name: string,
  spec: Record<string, unknown> = { image: "x" },
): Promise<void> {
  await f.meta.create({ type: "function", tenant, namespace, name, object: { spec } });
  await until(
    `the gateway to see ${tenant}/${namespace}/${name}`,
    () => f.cache.has(`${tenant}/${namespace}/${name}`),
  );
}

/** Makes tenant `tenant` and its namespace `namespace`, as a test's second place to call in. */
export async function addNamespace(
  f: GatewayFixture,
  tenant: string,
  namespace: string,
): Promise<void> {
  await f.meta.create({
    type: "tenant",
    tenant: "system",
    namespace: "system",
    name: tenant,
    object: {},
  });
  await f.meta.create({
    type: "namespace",
    tenant,
    namespace: "system",
    name: namespace,
    object: {},
  });
}

/** An audit log that keeps rows in memory, for assertions. */
export interface MemoryAudit extends AuditLog {
  requests: RequestRow[];
  pods: PodRow[];
}

/** A {@linkcode MemoryAudit}. */
export function memoryAudit(): MemoryAudit {
  const requests: RequestRow[] = [];
  const pods: PodRow[] = [];
  const pick = <T extends { time: number; tenant: string; namespace: string; func: string }>(
    rows: T[],
    q: AuditQuery = {},
  ) =>
    rows.filter((r) =>
      (q.tenant === undefined || r.tenant === q.tenant) &&
      (q.namespace === undefined || r.namespace === q.namespace) &&
      (q.func === undefined || r.func === q.func) &&
      (q.since === undefined || r.time >= q.since) &&
      (q.until === undefined || r.time < q.until) &&
      (!q.status || statusIn((r as Partial<RequestRow>).status, q.status))
    ).reverse().slice(0, q.limit ?? 100);
  return {
    requests,
    pods,
    request: (row) => void requests.push(row),
    pod: (row) => void pods.push(row),
    query:
      ((kind: "requests" | "pods", q?: AuditQuery) =>
        Promise.resolve(kind === "requests" ? pick(requests, q) : pick(pods, q))) as AuditLog[
          "query"
        ],
    stats: () => ({
      backend: "embedded",
      buffered: 0,
      written: requests.length + pods.length,
      dropped: 0,
      refusedDropped: 0,
      healthy: true,
    }),
    usage: (q) => Promise.resolve(summarizeUsage(requests, q)),
    flush: () => Promise.resolve(),
    close: () => Promise.resolve(),
  };
}

function statusIn(status: number | undefined, range: { min: number; max: number }): boolean {
  return status !== undefined && status >= range.min && status <= range.max;
}

/** A worker on a free port that answers with its name, the path and query it got, after `delayMs`. */
export function fakeWorker(name: string, options: { status?: number; delayMs?: number } = {}) {
  /** The request headers of each call it had, in order. */
  const heard: Headers[] = [];
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (req) => {
    heard.push(req.headers);
    if (options.delayMs) await new Promise((r) => setTimeout(r, options.delayMs));
    const body = req.body ? await req.text() : "";
    const url = new URL(req.url);
    return Response.json({ worker: name, path: url.pathname, query: url.search, body }, {
      status: options.status ?? 200,
    });
  });
  return { endpoint: `127.0.0.1:${server.addr.port}`, heard, close: () => server.shutdown() };
}

/**
 * A worker on raw TCP: each connection it accepts goes to `serve`, and is
 * closed when `serve` ends (or when the worker closes). The base of
 * {@linkcode scriptedWorker} and {@linkcode rawWorker}.
 */
function tcpWorker(serve: (c: Deno.Conn) => Promise<void>) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  let connections = 0;
  const closeConn = (c: Deno.Conn) => {
    conns.delete(c);
    try {
      c.close();
    } catch {
      // closed
    }
  };
  (async () => {
    for await (const c of listener) {
      connections++;
      conns.add(c);
      serve(c).catch(() => {}).finally(() => closeConn(c));
    }
  })().catch(() => {});
  return {
    endpoint: `127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    /** Connections accepted so far. */
    connections: () => connections,
    close() {
      listener.close();
      for (const c of [...conns]) closeConn(c);
    },
  };
}

/**
 * A worker on raw TCP that hands each connection to `serve` once a request
 * head has come (`got`: what was read so far, the head and any body bytes
 * after it, one character a byte), and closes it when `serve` returns: for
 * workers that misbehave in one chosen way.
 */
export function scriptedWorker(serve: (c: Deno.Conn, got: string) => Promise<void>) {
  return tcpWorker(async (c) => {
    const buf = new Uint8Array(64 * 1024);
    let got = "";
    for (let n; !got.includes("\r\n\r\n") && (n = await c.read(buf)) !== null;) {
      got += String.fromCharCode(...buf.subarray(0, n));
    }
    await serve(c, got);
  });
}

/** Options of {@linkcode rawWorker}. */
export interface RawWorkerOptions {
  /** The answer written, byte for byte, for each request head received. */
  answer?: string | Uint8Array;
  /** A connection idle this long is closed by the worker (a server's keep-alive timeout). */
  idleCloseMs?: number;
}

/**
 * A worker on raw TCP: records the bytes it receives (each connection's,
 * in order) and writes `answer` at every blank line (a request head's end,
 * and a chunked body's), whatever else came: for what a proxy writes byte
 * for byte, and for keep-alive behaviour a real server has.
 */
export function rawWorker(options: RawWorkerOptions = {}) {
  const answer = typeof options.answer === "string" || options.answer === undefined
    ? new TextEncoder().encode(options.answer ?? "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    : options.answer;
  const received: Uint8Array[] = [];
  const worker = tcpWorker(async (c) => {
    const buf = new Uint8Array(64 * 1024);
    let pending = "";
    let idle: ReturnType<typeof setTimeout> | undefined;
    const arm = () => {
      clearTimeout(idle);
      if (options.idleCloseMs !== undefined) {
        idle = setTimeout(() => c.close(), options.idleCloseMs);
      }
    };
    arm();
    try {
      for (let n; (n = await c.read(buf)) !== null;) {
        received.push(buf.slice(0, n));
        pending += String.fromCharCode(...buf.subarray(0, n));
        let end;
        while ((end = pending.indexOf("\r\n\r\n")) >= 0) {
          pending = pending.slice(end + 4);
          await c.write(answer);
        }
        arm();
      }
    } finally {
      clearTimeout(idle);
    }
  });
  return {
    ...worker,
    /** Everything received, all connections together, as one string of one character a byte. */
    received: () => received.map((b) => String.fromCharCode(...b)).join(""),
  };
}
