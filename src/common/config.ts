/**
 * Configuration from the environment and `config/node.json`. Every setting
 * has a default that runs the all-in-one platform on one machine.
 *
 * @module
 */
import { z } from "zod";
import { ValidationError } from "./errors.ts";
import { GpuSchema, type NodeInfo } from "../model/cluster.ts";

/** The roles `RUN_SERVICE` selects. */
export const ROLES = ["All", "StateSvc", "Scheduler", "Gateway", "NodeAgent"] as const;
/** One of {@linkcode ROLES}. */
export type Role = typeof ROLES[number];

/** Root of the repository (where `main.ts` is). */
export const REPO_ROOT = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

/** Settings read from the environment. */
export interface EnvConfig {
  role: Role;
  /** `INFERX_DATA_DIR`, default `./data`. */
  dataDir: string;
  /** `GATEWAY_PORT`, default 4000. */
  gatewayPort: number;
  /** `GATEWAY_HOST`: address the gateway binds, default 127.0.0.1. */
  gatewayHost: string;
  /** `NODE_CONFIG`: path of node.json, default `config/node.json`. */
  nodeConfigPath: string;
  /** `INFERX_SAMPLES`: directory of objects applied at start, default `config/functions`; `none` for none. */
  samplesDir?: string;
  /** `INFERX_BODY_LIMIT`: largest request body in bytes, default 16 MiB. */
  bodyLimit: number;
  /** `LOG_LEVEL`, default `info`. */
  logLevel: string;
  /** `ETCD_ADDRS`: comma-separated etcd endpoints; embedded store when unset. */
  etcdAddrs?: string;
  /** `STATESVC_ADDR`: where roles reach the state service, default 127.0.0.1:1237. */
  statesvcAddr: string;
  /** `SCHEDULER_ADDR`: comma-separated scheduler replicas, default 127.0.0.1:1238. */
  schedulerAddrs: string[];
  /** `INFERX_BIND`: address gRPC services listen on, default 127.0.0.1. */
  bindHost: string;
  /** `STATESVC_PORT` (1237), `SCHEDULER_PORT` (1238), `NODEAGENT_PORT` (1233). */
  statesvcPort: number;
  schedulerPort: number;
  /** `SCHEDULER_HTTP_PORT` (1239): the scheduler's `/health` and `/state`. */
  schedulerHttpPort: number;
  nodeagentPort: number;
  /** `GATEWAY_TIMEOUT_MS`: a silent gateway loses its leases after this, default 10000. */
  gatewayTimeoutMs: number;
  /** `NODE_TIMEOUT_MS`: a node without heartbeats is not ready after this, default 10000. */
  nodeTimeoutMs: number;
  /** `INFERX_ADMIN_APIKEY`: the administrator's key; with it (or OIDC) auth is on. */
  adminApiKey?: string;
  /** `INFERX_OIDC_JWKS_URL`, `INFERX_OIDC_ISSUER`, `INFERX_OIDC_AUDIENCE`: bearer tokens. */
  oidc?: { jwksUrl: string; issuer?: string; audience?: string };
  /** `AUDITDB_ADDR`: PostgreSQL URL of the audit (`AUDITDB_PASSWORD` fills in its password); unset: embedded audit files. */
  auditDbAddr?: string;
  /** `AUDIT_BUFFER_ROWS`: audit rows held while the database is down, default 100000. */
  auditBufferRows: number;
  /** `AUDIT_RETAIN_DAYS`: the embedded audit deletes rows older than this, default 30; 0 keeps them. */
  auditRetainDays: number;
  /** `AUDIT_RETAIN_MB`: the embedded audit's rows take at most this many MiB, default 1024; 0: no limit. */
  auditRetainMB: number;
}

function intEnv(env: (k: string) => string | undefined, name: string, dflt: number): number {
  const raw = env(name);
  if (raw === undefined || raw === "") return dflt;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) {
    throw new ValidationError(`Invalid ${name}: "${raw}" is not a non-negative integer`, name);
  }
  return n;
}

/** `AUDITDB_ADDR` with `AUDITDB_PASSWORD` put in (so a manifest keeps the password in a secret). */
function auditAddr(addr?: string, password?: string): string | undefined {
  if (!addr) return undefined;
  if (!password) return addr;
  let url: URL;
  try {
    url = new URL(addr);
  } catch {
    throw new ValidationError(`Invalid AUDITDB_ADDR: not a postgres:// URL`, "AUDITDB_ADDR");
  }
  url.password = encodeURIComponent(password);
  return url.toString();
}

/** Reads the environment (or `env` in tests). */
export function readEnv(
  env: (k: string) => string | undefined = (k) => Deno.env.get(k),
): EnvConfig {
  const role = env("RUN_SERVICE") ?? "All";
  if (!(ROLES as readonly string[]).includes(role)) {
    throw new ValidationError(
      `Invalid RUN_SERVICE: "${role}" is not one of ${ROLES.join(", ")}`,
      "RUN_SERVICE",
    );
  }
  const samples = env("INFERX_SAMPLES") ?? `${REPO_ROOT}/config/functions`;
  return {
    role: role as Role,
    dataDir: env("INFERX_DATA_DIR") ?? "./data",
    gatewayPort: intEnv(env, "GATEWAY_PORT", 4000),
    gatewayHost: env("GATEWAY_HOST") ?? "127.0.0.1",
    nodeConfigPath: env("NODE_CONFIG") ?? `${REPO_ROOT}/config/node.json`,
    samplesDir: samples === "none" ? undefined : samples,
    bodyLimit: intEnv(env, "INFERX_BODY_LIMIT", 16 * 1024 * 1024),
    logLevel: env("LOG_LEVEL") ?? "info",
    etcdAddrs: env("ETCD_ADDRS") || undefined,
    statesvcAddr: env("STATESVC_ADDR") ?? "127.0.0.1:1237",
    schedulerAddrs: (env("SCHEDULER_ADDR") ?? "127.0.0.1:1238").split(",").map((a) => a.trim())
      .filter(Boolean),
    bindHost: env("INFERX_BIND") ?? "127.0.0.1",
    statesvcPort: intEnv(env, "STATESVC_PORT", 1237),
    schedulerPort: intEnv(env, "SCHEDULER_PORT", 1238),
    schedulerHttpPort: intEnv(env, "SCHEDULER_HTTP_PORT", 1239),
    nodeagentPort: intEnv(env, "NODEAGENT_PORT", 1233),
    gatewayTimeoutMs: intEnv(env, "GATEWAY_TIMEOUT_MS", 10_000),
    nodeTimeoutMs: intEnv(env, "NODE_TIMEOUT_MS", 10_000),
    adminApiKey: env("INFERX_ADMIN_APIKEY") || undefined,
    oidc: env("INFERX_OIDC_JWKS_URL")
      ? {
        jwksUrl: env("INFERX_OIDC_JWKS_URL")!,
        issuer: env("INFERX_OIDC_ISSUER") || undefined,
        audience: env("INFERX_OIDC_AUDIENCE") || undefined,
      }
      : undefined,
    auditDbAddr: auditAddr(env("AUDITDB_ADDR"), env("AUDITDB_PASSWORD")),
    auditBufferRows: intEnv(env, "AUDIT_BUFFER_ROWS", 100_000),
    auditRetainDays: intEnv(env, "AUDIT_RETAIN_DAYS", 30),
    auditRetainMB: intEnv(env, "AUDIT_RETAIN_MB", 1024),
  };
}

/** `config/node.json`: what a node offers. `auto` sizes CPU and memory from the host. */
export const NodeConfigSchema = z.object({
  name: z.string().min(1).default("node1"),
  /** Address workers listen on and are reached at. */
  address: z.string().default("127.0.0.1"),
  cpuMillis: z.union([z.int().min(1), z.literal("auto")]).default("auto"),
  memMB: z.union([z.int().min(1), z.literal("auto")]).default("auto"),
  /** GPUs declared for placement when the driver reports none. */
  gpus: z.array(GpuSchema).default([]),
  contextOverheadMB: z.int().min(0).default(0),
  /** `auto`: Docker when its socket answers, else processes. Env `INFERX_RUNTIME` overrides. */
  runtime: z.enum(["auto", "process", "docker"]).default("auto"),
});

/** Loads node.json into the node the agent registers (`NODE_NAME` overrides the name). */
export async function loadNodeConfig(path: string): Promise<NodeInfo> {
  let raw: unknown = {};
  try {
    raw = JSON.parse(await Deno.readTextFile(path));
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) {
      throw new ValidationError(`Invalid node config ${path}: ${(err as Error).message}`);
    }
  }
  const r = NodeConfigSchema.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0];
    const field = issue.path.join(".");
    throw new ValidationError(`Invalid node config ${path}: ${field}: ${issue.message}`, field);
  }
  const c = r.data;
  return {
    name: Deno.env.get("NODE_NAME") ?? c.name,
    address: Deno.env.get("NODE_ADDRESS") ?? c.address,
    cpuMillis: c.cpuMillis === "auto" ? navigator.hardwareConcurrency * 1000 : c.cpuMillis,
    memMB: c.memMB === "auto" ? Math.floor(Deno.systemMemoryInfo().total / 1048576) : c.memMB,
    gpus: c.gpus,
    contextOverheadMB: c.contextOverheadMB,
    // Advertised from what the runtime can do, never from configuration.
    standbyTiers: [],
    runtime: Deno.env.get("INFERX_RUNTIME") ?? c.runtime,
    ready: true,
    heartbeat: 0,
  };
}
