/**
 * Configuration, read once at start: the environment, one zod schema per
 * section (each role reads the sections it needs), and `config/node.json`
 * for a node agent. Every setting has a default that runs the all-in-one
 * platform on one machine; `docs/configuration.md` lists them all.
 *
 * @module
 */
import { isIP } from "node:net";
import { z } from "zod";
import { invalidInput, ValidationError } from "./errors.ts";
import { type Cidr, parseCidrList, parsePodCidr } from "./cidr.ts";
import { LOG_LEVELS } from "./log.ts";
import { adminKeyProblem, PLACEHOLDER } from "./credential.ts";
import { GpuSchema, NODE_NAME_RE, NODE_NAME_RULE, type NodeInfo } from "../model/cluster.ts";

/** The roles `RUN_SERVICE` selects. */
export const ROLES = ["All", "StateSvc", "Scheduler", "Gateway", "NodeAgent"] as const;
/** One of {@linkcode ROLES}. */
export type Role = typeof ROLES[number];

/** Root of the repository (where `main.ts` is). */
export const REPO_ROOT = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

/** The worker runtimes a node may use (`auto`: Docker when its engine answers, else processes). */
const RUNTIMES = ["auto", "process", "docker"] as const;

// ------------------------------------------------------- variable kinds

const DAY_S = 86_400;

/** A variable that is off when unset or empty. */
const optional = () => z.string().optional().transform((v) => v || undefined);
/** A non-negative integer; unset or empty gives `dflt`. */
const count = (dflt: number) =>
  z.string().optional().transform((raw, ctx) => {
    if (raw === undefined || raw === "") return dflt;
    // Digits only: Number() would take " " for 0, "0x10" for 16 and "1e3" for 1000.
    const n = /^\d+$/.test(raw) ? Number(raw) : NaN;
    if (Number.isSafeInteger(n)) return n;
    ctx.addIssue({ code: "custom", message: `"${raw}" is not a non-negative integer` });
    return z.NEVER;
  });

/** One of `values`; unset or empty gives `dflt`. */
const oneOf = <T extends string>(values: readonly T[], dflt: T) =>
  z.string().optional().transform((raw, ctx) => {
    if (raw === undefined || raw === "") return dflt;
    if (!(values as readonly string[]).includes(raw)) {
      ctx.addIssue({ code: "custom", message: `"${raw}" is not one of ${values.join(", ")}` });
      return z.NEVER;
    }
    return raw as T;
  });

/** A positive integer; unset or empty gives `dflt`. */
const positive = (dflt: number) => count(dflt).refine((n) => n > 0, { message: "must be above 0" });
/** A length of time, at most `max` (a timer takes 2^31 - 1 ms at most; past it, it fires at once). */
const upTo = (kind: z.ZodType<number, unknown>, max: number, unit: string) =>
  kind.refine((n) => n <= max, { message: `must be ${max.toLocaleString("en")} ${unit} at most` });
/** A variable with a default that must not be set empty (a path, say). */
const nonEmpty = (dflt: string) =>
  z.string().optional().transform((raw, ctx) => {
    if (raw === undefined) return dflt;
    if (raw !== "") return raw;
    ctx.addIssue({ code: "custom", message: "must not be empty (unset it for the default)" });
    return z.NEVER;
  });
/** A TCP port, 0 to 65535 (0: one the system picks, where a role allows it). */
const port = (dflt: number) =>
  count(dflt).refine((n) => n <= 65535, { message: "is not a port (0 to 65535)" });
/** An http(s) URL; off when unset or empty. */
const httpUrl = () =>
  optional().refine((raw) => {
    if (raw === undefined) return true;
    try {
      return ["http:", "https:"].includes(new URL(raw).protocol);
    } catch {
      return false;
    }
  }, { message: "is not an http(s) URL" });

// ------------------------------------------------------------- sections

const PlatformEnv = z.object({
  RUN_SERVICE: z.string().optional().transform((role, ctx) => {
    role ??= "All";
    if ((ROLES as readonly string[]).includes(role)) return role as Role;
    ctx.addIssue({ code: "custom", message: `"${role}" is not one of ${ROLES.join(", ")}` });
    return z.NEVER;
  }),
  LOG_LEVEL: oneOf(LOG_LEVELS, "info"),
  INFERX_DATA_DIR: nonEmpty("./data"),
  INFERX_SAMPLES: nonEmpty(`${REPO_ROOT}/config/functions`),
  INFERX_CPU_PROFILE: optional(),
  INFERX_HEAP_PROFILE: optional(),
});

const ClusterEnv = z.object({
  INFERX_BIND: nonEmpty("127.0.0.1"),
  ETCD_ADDRS: optional(),
  STATESVC_ADDR: nonEmpty("127.0.0.1:1237"),
  SCHEDULER_ADDR: nonEmpty("127.0.0.1:1238").refine(
    (v) => v.split(",").some((a) => a.trim()),
    { message: "names no address (host:port, comma-separated)" },
  ),
  INFERX_CLUSTER_TOKEN: bearerKey("cluster token"),
});

/** Where the roles find each other (distributed mode). */
export interface ClusterSettings {
  /** `INFERX_BIND`: address the gRPC services and the scheduler's HTTP listen on. */
  bindHost: string;
  /** `ETCD_ADDRS`: comma-separated etcd endpoints; the embedded store when unset. */
  etcdAddrs?: string;
  /** `STATESVC_ADDR`: where roles reach the state service. */
  statesvcAddr: string;
  /** `SCHEDULER_ADDR`: the scheduler replicas, comma-separated. */
  schedulerAddrs: string[];
  /**
   * `INFERX_CLUSTER_TOKEN`: a secret every role sends on its gRPC calls to
   * the others, and asks of every call it serves; unset: none.
   */
  clusterToken?: string;
}

const StateSvcEnv = z.object({ STATESVC_PORT: port(1237) });

/** The `StateSvc` role. */
export interface StateSvcSettings {
  /** `STATESVC_PORT`: `IxMetaService`. */
  port: number;
}

const SchedulerEnv = z.object({
  SCHEDULER_PORT: port(1238),
  SCHEDULER_HTTP_PORT: port(1239),
  GATEWAY_TIMEOUT_MS: upTo(positive(10_000), DAY_S * 1000, "ms"),
  NODE_TIMEOUT_MS: upTo(positive(10_000), DAY_S * 1000, "ms"),
  RECLAIM_GRACE_MS: upTo(count(10_000), DAY_S * 1000, "ms"),
});

/** The `Scheduler` role. */
export interface SchedulerSettings {
  /** `SCHEDULER_PORT`: `SchedulerService`. */
  port: number;
  /** `SCHEDULER_HTTP_PORT`: `/health`, `/state` and `/metrics`. */
  httpPort: number;
  /** `GATEWAY_TIMEOUT_MS`: a gateway silent this long loses its leases. */
  gatewayTimeoutMs: number;
  /** `NODE_TIMEOUT_MS`: a node without heartbeats this long is not ready. */
  nodeTimeoutMs: number;
  /**
   * `RECLAIM_GRACE_MS`: a worker reclaimed for another tenant's fair share
   * ends this long after, its calls done or not.
   */
  reclaimGraceMs: number;
}

/**
 * A key sent as a bearer (`what`, for messages). From a Secret or a file it
 * often ends in a newline: trimmed. A key with a space inside could never be
 * sent as a bearer: refused. Set but blank (an empty secret mounted, say)
 * would turn it off unseen: only unset or empty does.
 */
function bearerKey(what: string) {
  return z.string().optional().transform((raw, ctx) => {
    const v = raw?.trim() || undefined;
    const problem = v === undefined
      ? raw ? `is blank (unset it, or leave it empty, for no ${what})` : undefined
      : /\s/.test(v)
      ? "must not contain whitespace"
      : adminKeyProblem(v);
    if (problem) {
      ctx.addIssue({ code: "custom", message: problem });
      return z.NEVER;
    }
    return v;
  });
}

const GatewayEnv = z.object({
  GATEWAY_PORT: port(4000),
  // Unset: the role's default (1 in All, the core count for Gateway).
  GATEWAY_WORKERS: z.string().optional().transform((raw, ctx) => {
    if (raw === undefined || raw === "") return undefined;
    // Digits only, as `count` takes them.
    const n = /^\d+$/.test(raw) ? Number(raw) : NaN;
    if (!Number.isInteger(n) || n < 1 || n > 256) {
      ctx.addIssue({ code: "custom", message: `"${raw}" is not an integer from 1 to 256` });
      return z.NEVER;
    }
    return n;
  }),
  INFERX_GATEWAY_GROUP: optional(),
  INFERX_GATEWAY_GROUP_TOKEN: optional(),
  GATEWAY_HOST: nonEmpty("127.0.0.1"),
  GATEWAY_DRAIN_S: upTo(count(10), DAY_S, "s"),
  GATEWAY_READ_AHEAD_MB: count(64),
  GATEWAY_SPILL_MB: count(1024),
  GATEWAY_SPILL_DIR: optional(),
  INFERX_BODY_LIMIT: positive(16 * 1024 * 1024),
  INFERX_BODY_BUFFER_MB: positive(256),
  INFERX_ADMIN_APIKEY: bearerKey("administrator key"),
  // A scrape credential: /metrics of the gateways and schedulers, nothing else.
  INFERX_METRICS_KEY: bearerKey("metrics key"),
  INFERX_OIDC_JWKS_URL: httpUrl(),
  INFERX_OIDC_ISSUER: optional(),
  INFERX_OIDC_AUDIENCE: optional(),
});

/** The `Gateway` role. */
export interface GatewaySettings {
  /** `GATEWAY_PORT`. */
  port: number;
  /**
   * `GATEWAY_WORKERS`: gateway processes serving the port together
   * (SO_REUSEPORT). Unset: 1 in `All`, the core count for `Gateway`.
   */
  workers?: number;
  /**
   * `INFERX_GATEWAY_GROUP` (set by the platform on the processes it starts):
   * this process's index and every member's private metrics port, `i:p0,p1,...`;
   * with `INFERX_GATEWAY_GROUP_TOKEN`, the group's secret.
   */
  group?: { index: number; ports: number[]; token: string };
  /** `GATEWAY_HOST`: the address it binds. */
  host: string;
  /**
   * `GATEWAY_DRAIN_S`: at a stop, how long calls under way may take to
   * finish before their connections close (calls still waiting for a worker
   * are answered 503 at once).
   */
  drainS: number;
  /**
   * `GATEWAY_READ_AHEAD_MB`: how much of streamed answers the gateway may
   * hold read ahead of slow callers, all calls together (each up to 8 MiB),
   * so that their workers go back when done; 0: none.
   */
  readAheadMb: number;
  /**
   * `GATEWAY_SPILL_MB`: how much of streamed answers the gateway may hold
   * read ahead of slow callers on disk, past memory, all calls together
   * (each up to 256 MiB); 0: none.
   */
  spillMb: number;
  /** `GATEWAY_SPILL_DIR`: where (default: `gateway-spill` in `INFERX_DATA_DIR`). */
  spillDir: string;
  /** `INFERX_BODY_LIMIT`: the largest request body (bytes). */
  bodyLimit: number;
  /**
   * `INFERX_BODY_BUFFER_MB`: request bodies read whole the gateway holds
   * while they arrive, all requests together (a gateway group's processes
   * share it).
   */
  bodyBufferMb: number;
  /** `INFERX_ADMIN_APIKEY`: the administrator's key; with it (or OIDC) auth is on. */
  adminApiKey?: string;
  /** `INFERX_METRICS_KEY`: a credential for `/metrics` alone (a scraper's). */
  metricsKey?: string;
  /** `INFERX_OIDC_JWKS_URL`, `INFERX_OIDC_ISSUER`, `INFERX_OIDC_AUDIENCE`: bearer tokens. */
  oidc?: { jwksUrl: string; issuer?: string; audience?: string };
}

const CallsEnv = z.object({
  // Ten years, as an API key's expiry: a call's expiry must be a date.
  INFERX_CALL_TTL_S: upTo(positive(86_400), 10 * 365 * DAY_S, "s"),
  INFERX_CALL_MAX_BYTES: positive(1024 * 1024),
  // A call record holds at most 100 (src/model/call.ts).
  INFERX_CALL_ATTEMPTS: positive(3).refine((n) => n <= 100, { message: "must be 100 at most" }),
  INFERX_CALL_LEASE_S: upTo(positive(15), DAY_S, "s"),
  INFERX_CALL_OPEN_MAX: count(10_000),
  INFERX_CALL_OPEN_MAX_MB: count(256),
  INFERX_CALL_KEPT_MAX: count(100_000),
  INFERX_CALL_KEPT_MAX_MB: count(1024),
  INFERX_CALLBACK_ALLOW: z.string().optional().transform((raw, ctx) => {
    try {
      return parseCidrList(raw ?? "", "INFERX_CALLBACK_ALLOW");
    } catch (err) {
      ctx.addIssue({ code: "custom", message: (err as Error).message });
      return z.NEVER;
    }
  }),
});

/** Asynchronous calls (`Prefer: respond-async`) and their callbacks. */
export interface CallSettings {
  /** `INFERX_CALL_TTL_S`: how long a call's record and result are kept (s). */
  ttlS: number;
  /** `INFERX_CALL_MAX_BYTES`: the largest request body and result of one call. */
  maxBytes: number;
  /** `INFERX_CALL_ATTEMPTS`: tries per call, the first included. */
  attempts: number;
  /** `INFERX_CALL_LEASE_S`: a gateway's claim on a call it runs, renewed while it runs (s). */
  leaseS: number;
  /**
   * `INFERX_CALL_OPEN_MAX`: calls of one tenant accepted and not ended, where
   * its quota sets no `max_open_calls`.
   */
  openMax: number;
  /** `INFERX_CALL_OPEN_MAX_MB`: their requests together (MB), where no `max_open_call_mb`. */
  openMaxMB: number;
  /** `INFERX_CALL_KEPT_MAX`: ended calls of one tenant kept, where no `max_kept_calls`. */
  keptMax: number;
  /** `INFERX_CALL_KEPT_MAX_MB`: their answers together (MB), where no `max_kept_call_mb`. */
  keptMaxMB: number;
  /** `INFERX_CALLBACK_ALLOW`: non-public ranges callbacks may still reach. */
  callbackAllow: Cidr[];
}

const NodeEnv = z.object({
  NODE_CONFIG: optional(),
  NODE_NAME: optional().refine((v) => v === undefined || NODE_NAME_RE.test(v), {
    message: NODE_NAME_RULE,
  }),
  NODE_ADDRESS: optional().refine((v) => v === undefined || isIP(v) === 4, {
    message: "is not an IPv4 address (workers listen on it and are reached at it)",
  }),
  INFERX_RUNTIME: optional().refine(
    (v) => v === undefined || (RUNTIMES as readonly string[]).includes(v),
    { message: `is not one of ${RUNTIMES.join(", ")}` },
  ),
  NODEAGENT_PORT: port(1233),
  // As the docker command reads it (which builds the sample image): where the engine is. Read
  // by the node agent (a unix socket only), which says so of another; nothing else refuses it.
  DOCKER_HOST: optional(),
  INFERX_WORKER_USER: optional().refine((v) => v === undefined || WORKER_USER_RE.test(v), {
    message: "is not a user name, a uid or uid:gid",
  }),
  INFERX_CGROUP_FAVOR_DYNMODS: oneOf(["on", "off"] as const, "on"),
  INFERX_MOUNT_ALLOW: z.string().optional().transform((raw, ctx) => {
    const entries = (raw ?? "").split(",").map((d) => d.trim()).filter(Boolean);
    const out: MountAllow[] = [];
    for (const entry of entries) {
      const m = /^(.*?)(?::(ro|rw))?$/.exec(entry)!;
      const dir = m[1];
      if (!dir.startsWith("/") || dir.split("/").includes("..") || dir.includes(":")) {
        ctx.addIssue({
          code: "custom",
          message: `"${entry}" is not an absolute directory (with :rw, or :ro, after it)`,
        });
        return z.NEVER;
      }
      out.push({ dir: dir.replace(/\/+$/, "") || "/", rw: m[2] === "rw" });
    }
    return out;
  }),
});

/** What `INFERX_WORKER_USER` may be: a user name, a uid, or `uid:gid`. */
export const WORKER_USER_RE = /^(?:[a-z_][a-z0-9_-]{0,31}|\d{1,10}(?::\d{1,10})?)$/;

/**
 * A host directory functions may bind (`INFERX_MOUNT_ALLOW`). Read-only: it
 * and what is under it, bound read-only. `rw` (`DIR:rw`): it alone,
 * read-write too, nothing under it. A worker that may write in a directory can put a
 * symbolic link there, which Docker would follow when it binds a path under
 * it for another worker, between the agent's check and the bind: so no path
 * under one that workers may write is bound.
 */
export interface MountAllow {
  dir: string;
  rw: boolean;
}

/** The `NodeAgent` role: where node.json is, and what overrides it. */
export interface NodeSettings {
  /** `NODE_CONFIG`: the path of node.json. */
  configPath: string;
  /** `NODE_CONFIG` was set: the file must exist (else a missing one gives the defaults). */
  configRequired?: boolean;
  /** `NODE_NAME`: overrides `name` in node.json. */
  name?: string;
  /** `NODE_ADDRESS`: overrides `address` in node.json. */
  address?: string;
  /** `INFERX_RUNTIME`: overrides `runtime` in node.json. */
  runtime?: string;
  /** `NODEAGENT_PORT`: `NodeAgentService`; 0 picks a free port. */
  port: number;
  /**
   * `INFERX_MOUNT_ALLOW`: host directories a function's `mounts` may bind
   * into its container; none by default.
   */
  mountAllow?: MountAllow[];
  /** `DOCKER_HOST`: where the Docker engine is (`unix:///path`); unset, the default socket. */
  dockerHost?: string;
  /** `INFERX_WORKER_USER`: the user the process runtime's workers run as; unset, the agent's. */
  workerUser?: string;
  /**
   * `INFERX_CGROUP_FAVOR_DYNMODS`: `on` (default: pod starts' control group
   * moves wait for no RCU grace period) or `off`. Unset: on.
   */
  favorDynmods?: boolean;
}

/**
 * Pod network namespaces a node agent keeps made ahead unless
 * `INFERX_POD_NETNS_SPARES` says otherwise: a pod start takes one instead of
 * making its own (5–6 ms of `ip` on a 2-core VM).
 */
export const DEFAULT_POD_NET_SPARES = 2;

const SnapshotEnv = z.object({
  INFERX_SNAPSHOTS: oneOf(["on", "off"] as const, "on"),
  INFERX_SNAPSHOT_DISK_MB: count(10_240),
  INFERX_POD_NETNS: oneOf(["auto", "off"] as const, "auto"),
  INFERX_POD_NETNS_SPARES: count(DEFAULT_POD_NET_SPARES).refine((n) => n <= 64, {
    message: "must be at most 64",
  }),
  INFERX_POD_CIDR: nonEmpty("10.213.0.0/16").transform((v, ctx) => {
    try {
      parsePodCidr(v);
      return v;
    } catch (err) {
      const why = (err as Error).message.replace(/^Invalid pod network "[^"]*": /, "");
      ctx.addIssue({
        code: "custom",
        message: why.startsWith("its address")
          ? `"${v}": ${why}`
          : "is not an IPv4 range /16 to /28 (a.b.c.d/n)",
      });
      return z.NEVER;
    }
  }),
  INFERX_SNAPSHOT_START: oneOf(["auto", "always"] as const, "auto"),
  INFERX_CRIU_CACHE: oneOf(["seed", "off"] as const, "seed"),
});

/** Where and whether a node snapshots workers (CRIU itself: `INFERX_CRIU`). */
export interface SnapshotSettings {
  /** `INFERX_SNAPSHOTS`: `on` (default) or `off`. */
  enabled: boolean;
  /** `INFERX_SNAPSHOT_DISK_MB`: disk all snapshot images of a node may take, default 10240. */
  diskMB: number;
  /** `INFERX_POD_NETNS`: `auto` (default: a network and PID namespace per pod when CRIU works) or `off`. */
  podNamespaces: boolean;
  /**
   * `INFERX_POD_NETNS_SPARES`: pod network namespaces kept made ahead for
   * the next starts (default 2; none in a range of fewer than 64 blocks).
   * Unset: 2.
   */
  podNetSpares?: number;
  /** `INFERX_POD_CIDR`: the private range pod namespaces get addresses from, default 10.213.0.0/16. */
  podCidr: string;
  /**
   * `INFERX_SNAPSHOT_START`: `auto` (default: the scheduler restores from a
   * snapshot when that is expected to be faster than a fresh start) or
   * `always` (whenever the node holds one).
   */
  start: "auto" | "always";
  /**
   * `INFERX_CRIU_CACHE`: `seed` (default: where `/run` is not a tmpfs, the
   * agent makes CRIU's kernel cache `/run/criu.kdat` for this boot) or `off`.
   */
  criuCache: "seed" | "off";
}

const AuditEnv = z.object({
  AUDITDB_ADDR: z.string().optional(),
  AUDITDB_USER: z.string().optional(),
  AUDITDB_PASSWORD: z.string().optional().refine(
    (v) => !v?.startsWith(PLACEHOLDER),
    "is the manifests' placeholder (k8s/base/secrets.yaml): set a password of your own",
  ),
  AUDIT_BUFFER_ROWS: count(100_000),
  AUDIT_RETAIN_DAYS: count(30),
  AUDIT_RETAIN_MB: count(1024),
});

/** The audit, written by gateways (requests) and the state service (pods). */
export interface AuditSettings {
  /** `AUDITDB_ADDR` with `AUDITDB_USER` and `AUDITDB_PASSWORD` put in: PostgreSQL; unset: embedded. */
  dbAddr?: string;
  /** `AUDIT_BUFFER_ROWS`: rows held while the database is down. */
  bufferRows: number;
  /** `AUDIT_RETAIN_DAYS`: the embedded audit drops rows older than this; 0 keeps them. */
  retainDays: number;
  /** `AUDIT_RETAIN_MB`: the embedded audit keeps at most this many MiB; 0 for no limit. */
  retainMB: number;
}

/** The whole configuration. */
export interface Config {
  /** `RUN_SERVICE`. */
  role: Role;
  /** `LOG_LEVEL`. */
  logLevel: string;
  /** `INFERX_DATA_DIR`: the embedded store, snapshots, embedded audit. */
  dataDir: string;
  /** `INFERX_SAMPLES`: objects applied at start; `none` (undefined here) for none. */
  samplesDir?: string;
  /**
   * `INFERX_CPU_PROFILE`: a file for a V8 CPU profile of the process, taken
   * from start to stop (`{pid}` in it: the process id).
   */
  cpuProfile?: string;
  /** `INFERX_HEAP_PROFILE`: the same for V8's sampling heap profile (allocations). */
  heapProfile?: string;
  cluster: ClusterSettings;
  statesvc: StateSvcSettings;
  scheduler: SchedulerSettings;
  gateway: GatewaySettings;
  node: NodeSettings;
  audit: AuditSettings;
  /** Snapshot cold starts (node agents take them, the scheduler chooses them). */
  snapshots: SnapshotSettings;
  calls: CallSettings;
}

/**
 * `AUDITDB_ADDR` with `AUDITDB_USER` and `AUDITDB_PASSWORD` put in (so a
 * manifest takes both from the secret the database is made with).
 */
function auditAddr(addr?: string, user?: string, password?: string): string | undefined {
  if (!addr) return undefined;
  let url: URL | undefined;
  try {
    url = new URL(addr);
  } catch {
    // below
  }
  if (!url || !["postgres:", "postgresql:"].includes(url.protocol)) {
    throw new ValidationError(
      // Not the value: a password may be anywhere in it (a query, a keyword list).
      "Invalid configuration: AUDITDB_ADDR: is not a postgres:// URL " +
        "(postgres://USER:PASSWORD@HOST:PORT/DB; the value is not shown, as it may hold a password)",
      "AUDITDB_ADDR",
    );
  }
  if (!user && !password) return addr;
  if (user) url.username = encodeURIComponent(user);
  if (password) url.password = encodeURIComponent(password);
  return url.toString();
}

const SECTIONS = [
  PlatformEnv,
  ClusterEnv,
  StateSvcEnv,
  SchedulerEnv,
  GatewayEnv,
  NodeEnv,
  AuditEnv,
  SnapshotEnv,
  CallsEnv,
];

/** Every environment variable the configuration reads. */
export const CONFIG_ENV: readonly string[] = SECTIONS.flatMap((s) => Object.keys(s.shape));

function section<T extends z.ZodObject>(schema: T, vars: Record<string, string | undefined>) {
  const r = schema.safeParse(vars);
  if (!r.success) throw invalidInput("configuration", r.error);
  return r.data as z.output<T>;
}

/**
 * Reads the configuration from the environment (or `env` in tests). Throws a
 * `ValidationError` naming the variable at fault.
 */
export function readConfig(
  env: (k: string) => string | undefined = (k) => Deno.env.get(k),
): Config {
  const vars = Object.fromEntries(CONFIG_ENV.map((k) => [k, env(k)]));
  const p = section(PlatformEnv, vars);
  const c = section(ClusterEnv, vars);
  const s = section(SchedulerEnv, vars);
  const g = section(GatewayEnv, vars);
  const n = section(NodeEnv, vars);
  const a = section(AuditEnv, vars);
  const snap = section(SnapshotEnv, vars);
  const k = section(CallsEnv, vars);
  if (!g.INFERX_OIDC_JWKS_URL && (g.INFERX_OIDC_ISSUER || g.INFERX_OIDC_AUDIENCE)) {
    const name = g.INFERX_OIDC_ISSUER ? "INFERX_OIDC_ISSUER" : "INFERX_OIDC_AUDIENCE";
    throw new ValidationError(
      `Invalid configuration: ${name} is set without INFERX_OIDC_JWKS_URL, where the keys are`,
      name,
    );
  }
  if (g.INFERX_METRICS_KEY && !g.INFERX_ADMIN_APIKEY && !g.INFERX_OIDC_JWKS_URL) {
    throw new ValidationError(
      "Invalid configuration: INFERX_METRICS_KEY is set but auth is off (no INFERX_ADMIN_APIKEY " +
        "nor INFERX_OIDC_JWKS_URL): every caller would read /metrics, and everything else",
      "INFERX_METRICS_KEY",
    );
  }
  if (g.INFERX_METRICS_KEY && g.INFERX_METRICS_KEY === g.INFERX_ADMIN_APIKEY) {
    throw new ValidationError(
      "Invalid configuration: INFERX_METRICS_KEY is the admin key: a scraper's credential must " +
        "be one of its own, good for /metrics alone",
      "INFERX_METRICS_KEY",
    );
  }
  if (g.GATEWAY_PORT === 0 && (g.GATEWAY_WORKERS ?? 1) > 1) {
    throw new ValidationError(
      "Invalid configuration: GATEWAY_PORT: 0 (a port the system picks) cannot be shared by " +
        "GATEWAY_WORKERS processes: name the port",
      "GATEWAY_PORT",
    );
  }
  return {
    role: p.RUN_SERVICE,
    logLevel: p.LOG_LEVEL,
    dataDir: p.INFERX_DATA_DIR,
    samplesDir: p.INFERX_SAMPLES === "none" ? undefined : p.INFERX_SAMPLES,
    cpuProfile: p.INFERX_CPU_PROFILE?.replaceAll("{pid}", String(Deno.pid)),
    heapProfile: p.INFERX_HEAP_PROFILE?.replaceAll("{pid}", String(Deno.pid)),
    cluster: {
      bindHost: c.INFERX_BIND,
      etcdAddrs: c.ETCD_ADDRS,
      statesvcAddr: c.STATESVC_ADDR,
      schedulerAddrs: c.SCHEDULER_ADDR.split(",").map((a) => a.trim()).filter(Boolean),
      clusterToken: c.INFERX_CLUSTER_TOKEN,
    },
    statesvc: { port: section(StateSvcEnv, vars).STATESVC_PORT },
    scheduler: {
      port: s.SCHEDULER_PORT,
      httpPort: s.SCHEDULER_HTTP_PORT,
      gatewayTimeoutMs: s.GATEWAY_TIMEOUT_MS,
      nodeTimeoutMs: s.NODE_TIMEOUT_MS,
      reclaimGraceMs: s.RECLAIM_GRACE_MS,
    },
    gateway: {
      port: g.GATEWAY_PORT,
      workers: g.GATEWAY_WORKERS,
      group: parseGroup(g.INFERX_GATEWAY_GROUP, g.INFERX_GATEWAY_GROUP_TOKEN),
      host: g.GATEWAY_HOST,
      drainS: g.GATEWAY_DRAIN_S,
      readAheadMb: g.GATEWAY_READ_AHEAD_MB,
      spillMb: g.GATEWAY_SPILL_MB,
      spillDir: g.GATEWAY_SPILL_DIR ?? `${p.INFERX_DATA_DIR.replace(/\/+$/, "")}/gateway-spill`,
      bodyLimit: g.INFERX_BODY_LIMIT,
      bodyBufferMb: g.INFERX_BODY_BUFFER_MB,
      adminApiKey: g.INFERX_ADMIN_APIKEY,
      metricsKey: g.INFERX_METRICS_KEY,
      oidc: g.INFERX_OIDC_JWKS_URL
        ? {
          jwksUrl: g.INFERX_OIDC_JWKS_URL,
          issuer: g.INFERX_OIDC_ISSUER,
          audience: g.INFERX_OIDC_AUDIENCE,
        }
        : undefined,
    },
    node: {
      configPath: n.NODE_CONFIG ?? `${REPO_ROOT}/config/node.json`,
      configRequired: n.NODE_CONFIG !== undefined,
      name: n.NODE_NAME,
      address: n.NODE_ADDRESS,
      runtime: n.INFERX_RUNTIME,
      port: n.NODEAGENT_PORT,
      mountAllow: n.INFERX_MOUNT_ALLOW,
      dockerHost: n.DOCKER_HOST,
      workerUser: n.INFERX_WORKER_USER,
      favorDynmods: n.INFERX_CGROUP_FAVOR_DYNMODS === "on",
    },
    audit: {
      dbAddr: auditAddr(a.AUDITDB_ADDR, a.AUDITDB_USER, a.AUDITDB_PASSWORD),
      bufferRows: a.AUDIT_BUFFER_ROWS,
      retainDays: a.AUDIT_RETAIN_DAYS,
      retainMB: a.AUDIT_RETAIN_MB,
    },
    snapshots: {
      enabled: snap.INFERX_SNAPSHOTS === "on",
      diskMB: snap.INFERX_SNAPSHOT_DISK_MB,
      podNamespaces: snap.INFERX_POD_NETNS === "auto",
      podNetSpares: snap.INFERX_POD_NETNS_SPARES,
      podCidr: snap.INFERX_POD_CIDR,
      start: snap.INFERX_SNAPSHOT_START,
      criuCache: snap.INFERX_CRIU_CACHE,
    },
    calls: {
      ttlS: k.INFERX_CALL_TTL_S,
      maxBytes: k.INFERX_CALL_MAX_BYTES,
      attempts: k.INFERX_CALL_ATTEMPTS,
      leaseS: k.INFERX_CALL_LEASE_S,
      openMax: k.INFERX_CALL_OPEN_MAX,
      openMaxMB: k.INFERX_CALL_OPEN_MAX_MB,
      keptMax: k.INFERX_CALL_KEPT_MAX,
      keptMaxMB: k.INFERX_CALL_KEPT_MAX_MB,
      callbackAllow: k.INFERX_CALLBACK_ALLOW,
    },
  };
}

/** `i:p0,p1,...` and the group's secret into a group membership; malformed: a clear error. */
function parseGroup(raw?: string, token?: string): GatewaySettings["group"] {
  if (!raw) return undefined;
  const m = /^(\d+):(\d+(?:,\d+)*)$/.exec(raw);
  const ports = m ? m[2].split(",").map(Number) : [];
  const index = m ? Number(m[1]) : -1;
  if (!m || index >= ports.length || ports.some((p) => p < 1 || p > 65535)) {
    throw new ValidationError(
      `Invalid configuration: INFERX_GATEWAY_GROUP: "${raw}" is not index:port,port,...`,
      "INFERX_GATEWAY_GROUP",
    );
  }
  if (!token || token.length < 32) {
    throw new ValidationError(
      "Invalid configuration: INFERX_GATEWAY_GROUP_TOKEN: the group's secret (at least 32 characters) must come with INFERX_GATEWAY_GROUP",
      "INFERX_GATEWAY_GROUP_TOKEN",
    );
  }
  return { index, ports, token };
}

/** `config/node.json`: what a node offers. `auto` sizes CPU and memory from the host. */
export const NodeConfigSchema = z.strictObject({
  name: z.string().regex(NODE_NAME_RE, NODE_NAME_RULE).default("node1"),
  /** Address workers listen on and are reached at: an IPv4 address (endpoints are `ip:port`). */
  address: z.string().refine((a) => isIP(a) === 4, "is not an IPv4 address").default("127.0.0.1"),
  cpuMillis: z.union([z.int().min(1), z.literal("auto")]).default("auto"),
  memMB: z.union([z.int().min(1), z.literal("auto")]).default("auto"),
  /** GPUs declared for placement when the driver reports none. */
  gpus: z.array(GpuSchema).default([]).refine(
    (gpus) => new Set(gpus.map((g) => g.index)).size === gpus.length,
    "two GPUs have the same index",
  ),
  contextOverheadMB: z.int().min(0).default(0),
  /** `auto`: Docker when its socket answers, else processes. Env `INFERX_RUNTIME` overrides. */
  runtime: z.enum(RUNTIMES).default("auto"),
});

/**
 * Loads node.json (`settings.configPath`; defaults when it is missing) into
 * the node the agent registers, with the environment's overrides applied.
 */
export async function loadNodeConfig(settings: NodeSettings): Promise<NodeInfo> {
  return (await readNodeConfig(settings)).node;
}

/**
 * {@linkcode loadNodeConfig}, and which of CPU and memory were sized `auto`
 * from what this process sees: in a container, its own CPU quota, which the
 * Docker runtime's workers (the engine's, outside it) are not bound by.
 */
export async function readNodeConfig(
  settings: NodeSettings,
): Promise<{ node: NodeInfo; auto: { cpu: boolean; mem: boolean } }> {
  const path = settings.configPath;
  let raw: unknown = {};
  try {
    raw = JSON.parse(await Deno.readTextFile(path));
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) {
      throw new ValidationError(`Invalid node config ${path}: ${(err as Error).message}`);
    }
    if (settings.configRequired) {
      throw new ValidationError(
        `Invalid configuration: NODE_CONFIG: ${path} does not exist`,
        "NODE_CONFIG",
      );
    }
  }
  const r = NodeConfigSchema.safeParse(raw);
  if (!r.success) throw invalidInput(`node config ${path}`, r.error);
  const c = r.data;
  const node: NodeInfo = {
    name: settings.name ?? c.name,
    address: settings.address ?? c.address,
    cpuMillis: c.cpuMillis === "auto" ? navigator.hardwareConcurrency * 1000 : c.cpuMillis,
    memMB: c.memMB === "auto" ? Math.floor(Deno.systemMemoryInfo().total / 1048576) : c.memMB,
    gpus: c.gpus,
    contextOverheadMB: c.contextOverheadMB,
    // Advertised from what the runtime can do, never from configuration.
    standbyTiers: [],
    runtime: settings.runtime ?? c.runtime,
    ready: true,
    heartbeat: 0,
  };
  return { node, auto: { cpu: c.cpuMillis === "auto", mem: c.memMB === "auto" } };
}

/**
 * What keeps `INFERX_DATA_DIR` from being used, said at start with the
 * variable's name (a role would fail later on a path inside it); undefined
 * when it is a directory, or not there yet (each role makes what it needs).
 */
export function dataDirProblem(path: string): string | undefined {
  try {
    if (!Deno.statSync(path).isDirectory) {
      return `Invalid configuration: INFERX_DATA_DIR: ${path} is not a directory`;
    }
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined;
    return `Invalid configuration: INFERX_DATA_DIR: ${path}: ${(err as Error).message}`;
  }
  return undefined;
}
