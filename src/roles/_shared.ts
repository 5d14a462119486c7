/**
 * What more than one role derives from the configuration the same way: the
 * node agent's settings, the scheduler's and the gateway's options.
 *
 * @module
 */
import { type Config, readNodeConfig, REPO_ROOT } from "../common/config.ts";
import { logger } from "../common/log.ts";
import type { GatewayConfig } from "../gateway/mod.ts";
import type { NodeAgentConfig } from "../nodeagent/mod.ts";
import type { MetaClient } from "../rpc/types.ts";
import type { SchedulerOptions } from "../scheduler/service.ts";

/**
 * Warns when this role's gRPC port (`setting`) is reached from beyond this
 * host with no cluster token asked of its callers: whoever reaches it can
 * write any record, down to the commands a node agent runs.
 */
export function warnOpenPeers(config: Config, setting: string): void {
  const host = config.cluster.bindHost;
  if (config.cluster.clusterToken || isLoopback(host)) return;
  logger().warning(
    "{setting} listens on {host} and takes calls from any peer: set INFERX_CLUSTER_TOKEN, the " +
      "same on every role, and keep the port on a private network",
    { setting, host },
  );
}

/** Whether `host` (a name or an address to bind) is this host's loopback alone. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[(.*)\]$/, "$1").toLowerCase();
  return h === "localhost" || h === "::1" || /^127\.\d+\.\d+\.\d+$/.test(h);
}

/** A running role: what `main.ts` stops on SIGINT or SIGTERM. */
export interface RoleHandle {
  stop(): Promise<void>;
}

/**
 * What a role's start has started so far, to stop again, newest first, when
 * a later step fails (a port already taken): the process then exits with
 * nothing of it left behind (a node agent's control groups, the store's lock,
 * workers). {@linkcode Started.stop} is also the role's own stop.
 */
export class Started {
  readonly #stops: (() => unknown)[] = [];

  /** Keeps `stop` (of what was just started) for later; returns `value`. */
  add<T>(value: T, stop: (value: T) => unknown): T {
    this.#stops.push(() => stop(value));
    return value;
  }

  /** Stops everything added, newest first; a stop that fails is logged, the rest go on. */
  async stop(): Promise<void> {
    while (this.#stops.length) {
      try {
        await this.#stops.pop()!();
      } catch (err) {
        logger().error("Stop failed: {error}", { error: String(err) });
      }
    }
  }

  /** Runs `start`, stopping what it started if it throws (the error rethrown). */
  async run<T>(start: (started: Started) => Promise<T>): Promise<T> {
    try {
      return await start(this);
    } catch (err) {
      await this.stop();
      throw err;
    }
  }
}

/**
 * The node agent of this process: node.json with the environment's
 * overrides, process workers run from the repository root, file-tier
 * snapshots under the data directory, and a scope (node name and the data
 * directory's real path, and for containers the installation's id) that
 * tells this platform's workers from another's on the same host.
 */
export async function nodeAgentConfig(config: Config, meta: MetaClient): Promise<NodeAgentConfig> {
  const { node, auto } = await readNodeConfig(config.node);
  await Deno.mkdir(config.dataDir, { recursive: true, mode: 0o700 });
  return {
    meta,
    node,
    workDir: REPO_ROOT,
    snapshotDir: `${config.dataDir}/snapshots`,
    snapshotSettings: config.snapshots,
    mountAllow: config.node.mountAllow,
    dockerHost: config.node.dockerHost,
    workerUser: config.node.workerUser,
    favorDynmods: config.node.favorDynmods,
    scope: `${node.name}@${await Deno.realPath(config.dataDir)}`,
    installId: await installId(config.dataDir),
    autoSized: auto,
  };
}

/**
 * The id of the platform installation whose data lives in `dataDir`, made
 * once: node name and path alone are the same in every copy of a container
 * stack (`node1@/var/lib/inferx`), and the agents of two stacks on one Docker
 * engine took each other's containers for their own.
 */
async function installId(dataDir: string): Promise<string> {
  const file = `${dataDir}/install-id`;
  const read = async () => (await Deno.readTextFile(file).catch(() => "")).trim();
  const id = await read();
  if (/^[0-9a-f]{16}$/.test(id)) return id;
  const made = Array.from(
    crypto.getRandomValues(new Uint8Array(8)),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
  try {
    await Deno.writeTextFile(file, `${made}\n`, { createNew: !id });
    return made;
  } catch (err) {
    if (err instanceof Deno.errors.AlreadyExists) return await read(); // another role made it
    throw err;
  }
}

/** The scheduler's timeouts. */
export function schedulerOptions(config: Config): SchedulerOptions {
  return {
    gatewayTimeoutMs: config.scheduler.gatewayTimeoutMs,
    nodeTimeoutMs: config.scheduler.nodeTimeoutMs,
    reclaimGraceMs: config.scheduler.reclaimGraceMs,
    snapshotStart: config.snapshots.start,
  };
}

const MIB = 1024 * 1024;

/**
 * `total` bytes split among a group of `members` processes, each share at
 * least `least` (one body) where `total` has that much: past as many
 * processes as `total` holds of them, an even share would refuse, for good,
 * what a single process takes.
 */
export function groupShare(total: number, members: number, least: number): number {
  return Math.max(Math.floor(total / members), Math.min(total, least));
}

/**
 * The gateway's listener, body limit and authentication. The request bodies
 * it holds while they arrive, and what streamed answers may hold read ahead,
 * in memory and on disk, are the gateway's as a whole: each of a group of
 * `members` processes (`GATEWAY_WORKERS`) takes its share (of bodies at
 * least one: {@linkcode groupShare}).
 */
export function gatewayOptions(
  config: Config,
  members = 1,
): Pick<
  GatewayConfig,
  | "port"
  | "hostname"
  | "drainMs"
  | "bodyLimit"
  | "bodyBufferBytes"
  | "readAheadBytes"
  | "spill"
  | "adminApiKey"
  | "metricsKey"
  | "oidc"
  | "calls"
> {
  return {
    port: config.gateway.port,
    hostname: config.gateway.host,
    drainMs: config.gateway.drainS * 1000,
    bodyLimit: config.gateway.bodyLimit,
    bodyBufferBytes: groupShare(
      config.gateway.bodyBufferMb * MIB,
      members,
      config.gateway.bodyLimit,
    ),
    // Even shares: past them an answer is read as its caller takes it, never refused.
    readAheadBytes: Math.floor(config.gateway.readAheadMb * MIB / members),
    spill: {
      dir: config.gateway.spillDir,
      limit: Math.floor(config.gateway.spillMb * MIB / members),
    },
    adminApiKey: config.gateway.adminApiKey,
    metricsKey: config.gateway.metricsKey,
    oidc: config.gateway.oidc,
    calls: config.calls,
  };
}
