/**
 * The `NodeAgent` role: one node's agent with its pod runtime.
 *
 * @module
 */
import type { NodeInfo } from "../model/cluster.ts";
import type { MetaClient } from "../rpc/types.ts";
import { NodeAgent, type NodeAgentOptions } from "./agent.ts";
import { InferxError } from "../common/errors.ts";
import { logger } from "../common/log.ts";
import {
  DEFAULT_POD_NET_SPARES,
  type MountAllow,
  type SnapshotSettings,
} from "../common/config.ts";
import { Criu, type CriuCapability, criuCapability, locateCriu } from "./criu.ts";
import {
  type CriuCacheState,
  dropStaleCriuCache,
  keepCriuCache,
  prepareCriuCache,
} from "./criu_cache.ts";
import { openLibCuda } from "../ffi/libcuda.ts";
import { discover, hugePageMode } from "./discover.ts";
import { PodCgroups } from "./cgroup.ts";
import { favorDynmods, type FavorDynmodsState } from "./favor_dynmods.ts";
import { PodNetworks } from "./pod_net.ts";
import { SnapshotManager } from "./snapshots.ts";
import {
  DOCKER_SOCKET,
  dockerHostSize,
  DockerRuntime,
  dockerSnapshotReason,
  dockerUnavailable,
  removeScopeContainers,
} from "./docker_runtime.ts";
import { findTool, ProcessRuntime, sweepProcessPods } from "./process_runtime.ts";
import { resolveWorkerUser, type WorkerUser } from "./worker_user.ts";
import { type PodRuntime, WORKER_PIDS_LIMIT } from "./runtime.ts";

export { NodeAgent } from "./agent.ts";
export { discover, gpuType } from "./discover.ts";
export { ProcessRuntime } from "./process_runtime.ts";
export { dockerAvailable, DockerRuntime } from "./docker_runtime.ts";
export { SnapshotManager } from "./snapshots.ts";

/** Configuration of the node agent role. */
export interface NodeAgentConfig extends NodeAgentOptions {
  meta: MetaClient;
  node: NodeInfo;
  /** Working directory of process workers. */
  workDir?: string;
  /** Identifies this agent's workers across restarts (node name and data directory). */
  scope?: string;
  /**
   * The installation's id, added to the scope of Docker containers: the one
   * engine may serve copies of a container stack whose node name and data
   * directory are the same.
   */
  installId?: string;
  /**
   * Which of the node's CPU and memory were sized `auto` from this process's
   * view: with the Docker runtime they are sized from the engine's host
   * instead (an agent in a container sees its own CPU quota).
   */
  autoSized?: { cpu: boolean; mem: boolean };
  /** Where file-tier images, snapshots and worker output go. @default `{workDir}/snapshots` */
  snapshotDir?: string;
  /** Snapshot settings. @default on, 10240 MB, pod namespaces when CRIU works, 10.213.0.0/16 */
  snapshotSettings?: SnapshotSettings;
  /** Host directories containers may mount (`INFERX_MOUNT_ALLOW`). @default none */
  mountAllow?: MountAllow[];
  /** Where the Docker engine is (`DOCKER_HOST`, a unix socket). @default the default socket */
  dockerHost?: string;
  /**
   * The user the process runtime's workers run as (`INFERX_WORKER_USER`: a
   * name, a uid or `uid:gid`). @default the agent's own
   */
  workerUser?: string;
  /**
   * `INFERX_CGROUP_FAVOR_DYNMODS`: with pod control groups, keep their
   * moves from waiting for an RCU grace period (`favor_dynmods.ts`);
   * `false` unmounts the hierarchy an agent mounted for it. @default true
   */
  favorDynmods?: boolean;
}

/** The defaults of {@linkcode SnapshotSettings}. */
export const DEFAULT_SNAPSHOT_SETTINGS: SnapshotSettings = {
  enabled: true,
  diskMB: 10_240,
  podNamespaces: true,
  podCidr: "10.213.0.0/16",
  start: "auto",
  criuCache: "seed",
};

/** Says how CRIU's kernel cache stands, when not as it should (`criu_cache.ts`). */
function logCriuCache(c: CriuCacheState): void {
  if (c.state === "seeded") {
    logger("nodeagent").info(
      "CRIU's kernel cache: /run is not a tmpfs, where CRIU keeps it; made by this agent for " +
        "this boot (INFERX_CRIU_CACHE=off to leave it)",
    );
  } else if (c.state === "off") {
    logger("nodeagent").warn(
      "CRIU's kernel cache is off: {reason}. Every dump and restore probes the kernel first " +
        "(tens of ms each): docs/standby.md#crius-kernel-cache",
      { reason: c.reason },
    );
  }
}

/**
 * Keeps pod starts' control group moves from waiting for a grace period
 * (`favor_dynmods.ts`) where pods get control groups; `enabled` false
 * unmounts what an agent mounted for it. Says how it stands.
 */
async function podStartMoves(
  groups: boolean,
  enabled: boolean,
): Promise<FavorDynmodsState | undefined> {
  if (!groups && enabled) return undefined;
  const s = await favorDynmods({ enabled });
  const log = logger("nodeagent");
  if (s.state === "mounted" && !s.reason) {
    log.info(
      "Pod starts: control group moves wait for no RCU grace period (favordynmods, on the " +
        "hierarchy at {dir}; INFERX_CGROUP_FAVOR_DYNMODS=off to unmount it)",
      { dir: s.mountPoint },
    );
  } else if (s.state === "off" && enabled) {
    log.warn(
      "Pod starts may wait for an RCU grace period each (7-19 ms measured on a 2-core VM) to move the " +
        "pod into its control group: {reason}. docs/standby.md#control-group-moves",
      { reason: s.reason },
    );
  } else if (s.reason) log.info("Control group moves: {reason}", { reason: s.reason });
  return groups ? s : undefined;
}

/** A short tag of `scope` for names on the host (network namespaces). */
export function scopeTag(scope: string): string {
  let h = 2166136261;
  for (let i = 0; i < scope.length; i++) h = Math.imul(h ^ scope.charCodeAt(i), 16777619);
  return `ix${(h >>> 0).toString(36).padStart(7, "0").slice(-7)}`;
}

/**
 * Whether this node can start pods from snapshots, and the pod namespaces
 * that needs: the process runtime, CRIU that passes its check, and network
 * and PID namespaces per pod (root, iproute2, util-linux).
 */
async function snapshotSupport(
  /** The Docker engine's socket, when the node runs workers on Docker. */
  docker: string | undefined,
  criu: CriuCapability,
  settings: SnapshotSettings,
  scope: string,
  workerUser?: WorkerUser,
): Promise<{ podNetworks?: PodNetworks; snapshots: { available: boolean; reason?: string } }> {
  const off = (reason: string) => ({ snapshots: { available: false, reason } });
  const podNetworks = new PodNetworks({
    prefix: scopeTag(scope),
    cidr: settings.podCidr,
    spares: settings.podNetSpares ?? DEFAULT_POD_NET_SPARES,
  });
  // What an earlier run left (its pods' namespaces, their block claims) goes whatever this run's
  // settings (pod namespaces off, another range): nothing else would remove it.
  if (Deno.build.os === "linux" && Deno.uid?.() === 0) {
    const removed = await podNetworks.sweep();
    // Said here: the runtime's recovery, which counts the workers it ends, finds these gone.
    if (removed) {
      logger("nodeagent").warn(
        "Recovered after a restart: {n} pod namespace(s) an earlier run left removed, with what ran in them",
        { n: removed },
      );
    }
  }
  // The engine it uses is asked, not the default socket's.
  if (docker) return off(await dockerSnapshotReason(docker));
  if (!criu.available) return off(`CRIU is not available: ${criu.reason}`);
  if (!settings.podNamespaces) return off("Pod namespaces are off (INFERX_POD_NETNS=off)");
  const net = await podNetworks.capability();
  if (!net.available) return off(`No pod namespaces: ${net.reason}`);
  if (!settings.enabled) {
    return { podNetworks, snapshots: { available: false, reason: "INFERX_SNAPSHOTS=off" } };
  }
  if (workerUser) {
    // CRIU's parasite code runs as the worker: in a PID namespace of its own it must mount a
    // /proc there, which a worker without privileges may not. The file tier goes with it.
    const reason = "INFERX_WORKER_USER: CRIU cannot dump a worker without privileges";
    return { podNetworks, snapshots: { available: false, reason } };
  }
  return { podNetworks, snapshots: { available: true } };
}

/**
 * What an earlier run of this agent on the process runtime left (`auto`
 * chooses Docker once an engine answers): its workers, their control groups
 * and files. The Docker runtime's own recovery looks at containers alone.
 * Its pod namespaces went already (see {@linkcode snapshotSupport}).
 */
async function sweepEarlierProcessRun(scope: string, snapshotDir: string): Promise<void> {
  const root = Deno.build.os === "linux" && Deno.uid?.() === 0;
  const killed = await sweepProcessPods({
    scope,
    snapshotDir,
    // Those that are there: none is made (a host on Docker alone keeps its groups as they were).
    cgroups: root ? { sweep: () => PodCgroups.sweepLeftBehind(scopeTag(scope)) } : undefined,
  });
  if (killed) {
    logger("nodeagent").warn(
      "Recovered after a restart: {n} worker process(es) an earlier run on the process runtime left ended",
      { n: killed },
    );
  }
}

/**
 * What an earlier run of this agent on Docker left when this one runs
 * processes (`INFERX_RUNTIME=process`, or `auto` with the engine gone since):
 * its containers, where an engine answers. The process runtime's recovery
 * looks at processes alone.
 */
async function sweepEarlierDockerRun(socket: string, scope: string): Promise<void> {
  const removed = await removeScopeContainers(socket, scope);
  if (removed) {
    logger("nodeagent").warn(
      "Recovered after a restart: {n} container(s) an earlier run on Docker left removed",
      { n: removed },
    );
  }
}

/**
 * The node's CPU and memory sized `auto` from the Docker engine's host, where
 * the containers run: an agent in a container of its own (a Kubernetes
 * DaemonSet with a CPU limit) sees that container's quota, not the node.
 */
async function engineSize(
  node: NodeInfo,
  auto: { cpu: boolean; mem: boolean },
  socket: string,
): Promise<Pick<NodeInfo, "cpuMillis" | "memMB">> {
  const host = await dockerHostSize(socket);
  if (!host) return { cpuMillis: node.cpuMillis, memMB: node.memMB };
  return {
    cpuMillis: auto.cpu ? host.cpuMillis : node.cpuMillis,
    memMB: auto.mem ? host.memMB : node.memMB,
  };
}

/** A running node agent. */
export interface NodeAgentHandle {
  agent: NodeAgent;
  /** The runtime in use: `docker` or `process`. */
  runtime: string;
  stop(): Promise<void>;
}

/**
 * The user `INFERX_WORKER_USER` names, once the agent can run workers as it:
 * as root, with `setpriv` (util-linux) on its PATH.
 */
function processWorkerUser(spec: string): WorkerUser {
  const user = resolveWorkerUser(spec);
  if (Deno.uid() !== 0) {
    throw new InferxError(
      "invalid",
      `INFERX_WORKER_USER=${spec} needs the node agent to run as root (it runs as uid ${Deno.uid()}, and its workers as that already)`,
    );
  }
  if (!findTool("setpriv")) {
    throw new InferxError(
      "invalid",
      `INFERX_WORKER_USER=${spec} needs setpriv (Debian's util-linux) on the node agent's PATH`,
    );
  }
  return user;
}

/**
 * Starts a node agent. Its runtime is `node.runtime`: `docker`, `process`,
 * or `auto` (Docker when its socket answers, else processes).
 */
export async function start(config: NodeAgentConfig): Promise<NodeAgentHandle> {
  const exits: { agent?: NodeAgent } = {};
  const onExit = (podId: string, why: string) => exits.agent?.podExited(podId, why);
  const scope = config.scope ?? config.node.name;
  const want = config.node.runtime;
  if (!["auto", "docker", "process"].includes(want)) {
    throw new InferxError("invalid", `Invalid runtime "${want}": auto, docker or process`);
  }
  const host = config.dockerHost;
  const socket = host ? /^unix:\/\/(\/.+)$/.exec(host)?.[1] : DOCKER_SOCKET;
  const why = socket === undefined
    ? `DOCKER_HOST=${host} is not a unix socket (unix:///path), the only kind it takes`
    : want === "process"
    ? "INFERX_RUNTIME=process"
    : await dockerUnavailable(socket);
  const docker = why === undefined;
  if (want === "docker" && !docker) {
    throw new InferxError("unavailable", `Cannot use the Docker runtime: ${why}`);
  }
  if (want === "auto") {
    // An engine there but silent (still starting after a boot, say) is worth a warning: the
    // agent keeps the process runtime for its whole life.
    const silent = !docker && /answered nothing/.test(why ?? "");
    logger("nodeagent")[silent ? "warn" : "info"]("Runtime auto: {choice}", {
      choice: docker
        ? `docker (the engine on ${socket})`
        : `process (${why})${silent ? "; restart the agent once the engine answers" : ""}`,
    });
  }
  // The process runtime's alone: an agent on Docker only says it does not use it.
  const workerUser = config.workerUser && !docker
    ? processWorkerUser(config.workerUser)
    : undefined;
  // The driver stays open while the agent runs: the host-memory tier calls it.
  const { cuda } = docker ? { cuda: undefined } : openLibCuda();
  const settings = config.snapshotSettings ?? DEFAULT_SNAPSHOT_SETTINGS;
  const seed = settings.criuCache !== "off";
  // Before any CRIU runs, the check among them: what it must not read.
  const dropped = await dropStaleCriuCache({ seed });
  if (dropped) {
    logger("nodeagent").info("Removed CRIU's stale kernel cache: {dropped}", { dropped });
  }
  // The file tier and snapshots (CRIU) are the process runtime's, when CRIU passes its check.
  const criuCap = await criuCapability();
  const criuBin = !docker && criuCap.available ? locateCriu() : undefined;
  const criu = criuBin && new Criu(criuBin);
  const cacheOptions = { seed, criu: `${criuCap.version} ${criuCap.path}` };
  const criuCache = criu ? await prepareCriuCache(criu, cacheOptions) : undefined;
  if (criuCache) logCriuCache(criuCache);
  if (criu && criuCache?.state === "seeded") {
    criu.beforeRun = keepCriuCache(criu, cacheOptions, (s) => {
      logger("nodeagent").info("CRIU's kernel cache was gone (a CRIU of another build?): {now}", {
        now: s.state === "seeded" ? "made again" : `not made again: ${s.reason}`,
      });
    });
  }
  const snapshotDir = config.snapshotDir ?? `${config.workDir ?? Deno.cwd()}/snapshots`;
  const { podNetworks, snapshots } = await snapshotSupport(
    docker ? socket : undefined,
    criuCap,
    settings,
    scope,
    workerUser,
  );
  const cgroups = docker ? undefined : await PodCgroups.open(scopeTag(scope));
  if (cgroups) {
    logger("nodeagent").info("Pod limits: {state}", {
      state: cgroups.available
        ? `on (a control group per pod: its memory limit and CPU weight, ${
          cgroups.cgroups.limitsProcesses
            ? `at most ${WORKER_PIDS_LIMIT} processes`
            : `no process limit: ${cgroups.noProcessLimit ?? "no pids controller"}`
        })`
        : `off, workers run without memory limits: ${cgroups.reason}`,
    });
  }
  const dynmods = await podStartMoves(cgroups?.available === true, config.favorDynmods !== false);
  const containerScope = config.installId ? `${scope}#${config.installId}` : scope;
  if (docker) await sweepEarlierProcessRun(scope, snapshotDir);
  else if (socket !== undefined) await sweepEarlierDockerRun(socket, containerScope);
  const runtime: PodRuntime = docker
    ? new DockerRuntime({
      host: config.node.address,
      scope: containerScope,
      // Containers of a version before install ids (the label was the scope alone).
      legacyScopes: config.installId ? [scope] : [],
      onExit,
      mountAllow: config.mountAllow,
      socketPath: socket!,
    })
    : new ProcessRuntime({
      workDir: config.workDir,
      host: config.node.address,
      scope,
      onExit,
      cuda,
      criu,
      podNetworks,
      snapshotDir,
      cgroups: cgroups?.available ? cgroups.cgroups : undefined,
      workerUser,
    });
  if (docker && config.workerUser) {
    logger("nodeagent").warn(
      "INFERX_WORKER_USER is for the process runtime: Docker workers run as their image's user",
    );
  }
  if (runtime instanceof ProcessRuntime && workerUser) {
    logger("nodeagent").info(
      "Workers run as uid {uid}, gid {gid}, without capabilities (all of them: not kept from " +
        "each other)",
      { uid: workerUser.uid, gid: workerUser.gid },
    );
    if (!podNetworks) {
      logger("nodeagent").warn(
        "Workers share this node's network (no pod namespaces: see 'Snapshots' below): they " +
          "reach every listener of the node, the roles' gRPC on 127.0.0.1 among them",
      );
    }
  } else if (runtime instanceof ProcessRuntime && Deno.uid() === 0) {
    logger("nodeagent").warn(
      "The process runtime's workers run as root, as this agent: whoever may create or change " +
        "a function has this node and what its processes hold (the admin key among them). Let " +
        "only trusted owners write functions, or use the Docker runtime for tenants kept apart",
    );
  }
  if (runtime instanceof ProcessRuntime && podNetworks) {
    logger("nodeagent").info("Pod init: {state}", {
      state: runtime.init
        ? `${runtime.init} (reaps the processes a worker leaves behind)`
        : "none, each worker is its PID namespace's init and reaps no orphans: no tini on PATH (Debian's tini)",
    });
  }
  const hugePages = snapshots.available ? hugePageMode() : undefined;
  const node: NodeInfo = {
    ...(await discover(
      config.node,
      criuCache
        ? { ...criuCap, kernelCache: criuCache.state, kernelCacheReason: criuCache.reason }
        : criuCap,
    )),
    ...(docker && (config.autoSized?.cpu || config.autoSized?.mem)
      ? await engineSize(config.node, config.autoSized, socket!)
      : {}),
    runtime: runtime.name,
    favorDynmods: dynmods,
    snapshots: { ...snapshots, diskBudgetMB: settings.diskMB, hugePages, items: [] },
  };
  const manager = snapshots.available
    ? new SnapshotManager({
      meta: config.meta,
      node: config.node.name,
      dir: `${snapshotDir}/images`,
      diskBudgetMB: settings.diskMB,
      runtime: runtime as ProcessRuntime,
      onChange: () => exits.agent?.refreshNode(),
    })
    : undefined;
  logger("nodeagent").info("Snapshots: {state}", {
    state: snapshots.available
      ? `on (pod namespaces in ${podNetworks!.cidr}, ${settings.diskMB} MB of disk${
        hugePages && hugePages !== "always"
          ? `; transparent huge pages \`${hugePages}\`, so a restore fills memory 4 KiB at a time: docs/standby.md#huge-pages`
          : ""
      })`
      : `off: ${snapshots.reason}${
        podNetworks ? "" : " (workers share the node's network and PID namespace)"
      }`,
  });
  const agent = exits.agent = new NodeAgent(config.meta, runtime, node, {
    ...config,
    snapshots: manager,
  });
  try {
    await agent.start();
  } catch (err) {
    // What the runtime made before the start failed (the spare pod namespaces among it): a
    // handle that is never returned is never stopped.
    await podNetworks?.close().catch(() => {});
    if (cgroups?.available) cgroups.cgroups.close();
    cuda?.close();
    throw err;
  }
  return {
    agent,
    runtime: runtime.name,
    async stop() {
      await agent.stop();
      await podNetworks?.close();
      if (cgroups?.available) cgroups.cgroups.close();
      cuda?.close();
    },
  };
}
