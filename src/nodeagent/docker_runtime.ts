/**
 * Docker runtime through `npm:dockerode`: a pod is a container with the
 * function's image, CPU and memory limits, env, mounts, labels that mark it
 * as this agent's (scope, pod, function, version), GPU device requests, an
 * init process (`--init`: a worker without a SIGTERM handler still stops at
 * once), and its endpoint port published on the host address only, on a
 * network where containers cannot reach each other ({@linkcode WORKER_NETWORK}:
 * one tenant's worker cannot call another's past the gateway) nor the node
 * itself (`worker_fence.ts`). Paused tier:
 * the cgroup freezer (`docker pause`). After an agent restart, running
 * containers of its scope are adopted and stopped ones removed.
 *
 * @module
 */
// @ts-types="npm:@types/dockerode@^4"
import { createHash } from "node:crypto";
import { Agent } from "node:http";
import { isIP } from "node:net";
import Docker from "dockerode";
import { posix } from "node:path";
import { InferxError } from "../common/errors.ts";
import { logger } from "../common/log.ts";
import { forEachLimit } from "../common/limit.ts";
import type { MountAllow } from "../common/config.ts";
import { type StandbyTier, withOutput } from "../model/cluster.ts";
import { httpCall, waitForProbe } from "./probe.ts";
import { fenceBridge, fenceCommands } from "./worker_fence.ts";
import {
  type AdoptedPod,
  gpuId,
  platformEnv,
  type PodRuntime,
  type PodSpec,
  type RunningPod,
  WORKER_PIDS_LIMIT,
} from "./runtime.ts";

/** Options for {@linkcode DockerRuntime}. */
export interface DockerRuntimeOptions {
  /** @default "/var/run/docker.sock" */
  socketPath?: string;
  /** Host address ports are published on and workers reached at. @default "127.0.0.1" */
  host?: string;
  /** Marks this agent's containers (label `inferx.scope`). @default "default" */
  scope?: string;
  /**
   * Scopes this agent's containers had before (a version that marked them
   * without the installation's id): adopted or removed at a restart as its
   * own, never left running unowned.
   */
  legacyScopes?: string[];
  /** Called when a started pod's container ends without being stopped. */
  onExit?(podId: string, why: string): void;
  /** Probe interval (ms). @default 25 */
  probeIntervalMs?: number;
  /** How long a call of the engine may go unanswered (ms). @default {@linkcode DOCKER_ANSWER_MS} */
  answerMs?: number;
  /**
   * Host directories a function's `mounts` may bind (each, or under it);
   * any other mount is refused. @default none: a container reaches nothing
   * of the host it was not given by the operator.
   */
  mountAllow?: MountAllow[];
  /**
   * Fences the workers' bridge off the node; why it could not.
   * @default {@linkcode fenceBridge}
   */
  fence?: (bridge: string) => Promise<string[]>;
}

interface Entry {
  container: Docker.Container;
  endpoint: string;
  /** Started and answering; until then `start()` itself handles an exit. */
  ready: boolean;
  stopping: boolean;
  exited: Promise<string>;
  /** Settles `exited`, whoever learns of the end first: its wait, or a heartbeat's look. */
  end(why: string): void;
}

/** Workers a restarted agent probes at once. */
const RECOVER_PROBES = 16;

/** Where the Docker engine listens unless `DOCKER_HOST` says otherwise. */
export const DOCKER_SOCKET = "/var/run/docker.sock";

/**
 * How long the engine may keep an answer to the agent waiting, its
 * connection silent (ms): an engine that is stopped (SIGSTOP, a frozen VM)
 * still takes connections and answers nothing, and a start, a stop or the
 * platform's own stop would wait on it for ever. Waits for a container's
 * exit have none (they are meant to last).
 */
export const DOCKER_ANSWER_MS = 10_000;

/** How long the check at start waits for the engine to answer (ms). */
export const DOCKER_PING_MS = 3000;

/** Whether a Docker engine answers on `socketPath`. */
export async function dockerAvailable(socketPath = DOCKER_SOCKET): Promise<boolean> {
  return await dockerUnavailable(socketPath) === undefined;
}

/** Why no Docker engine can be used on `socketPath`; undefined when one answers. */
export async function dockerUnavailable(
  socketPath = DOCKER_SOCKET,
  timeoutMs = DOCKER_PING_MS,
): Promise<string | undefined> {
  try {
    await answered(new Docker({ socketPath, timeout: timeoutMs }).ping(), timeoutMs);
    return undefined;
  } catch (err) {
    if (err instanceof Silent) {
      return `the Docker engine on ${socketPath} takes connections but answered nothing within ${
        timeoutMs / 1000
      } s (stopped, or overloaded)`;
    }
    const code = (err as { code?: string }).code;
    if (code === "EACCES" || code === "EPERM") {
      return `this user may not use the engine's socket ${socketPath} (permission denied: add the user to its group, docker, or set INFERX_RUNTIME=process)`;
    }
    if (code === "ENOENT" || code === "ECONNREFUSED") {
      return `no Docker engine answers on ${socketPath} (set DOCKER_HOST=unix:///PATH for an engine on another socket)`;
    }
    return `the Docker engine on ${socketPath} does not answer: ${(err as Error).message}`;
  }
}

/** The engine answered nothing in time. */
class Silent extends Error {}

/** `p`, or {@linkcode Silent} once `ms` pass without it. */
async function answered<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Silent(`no answer within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Removes the containers of `scope` (label `inferx.scope`) an earlier run of
 * this agent on Docker left, when a restart chooses the process runtime:
 * nothing else would. How many; none when no engine answers on `socketPath`
 * within `timeoutMs`.
 */
export async function removeScopeContainers(
  socketPath: string,
  scope: string,
  timeoutMs = 2000,
): Promise<number> {
  const docker = new Docker({ socketPath, timeout: timeoutMs });
  let found: Docker.ContainerInfo[];
  try {
    found = await docker.listContainers({
      all: true,
      filters: { label: [`inferx.scope=${scope}`] },
    });
  } catch {
    return 0; // no engine here (or none that answers): nothing it holds to remove
  }
  let removed = 0;
  for (const c of found) {
    try {
      await docker.getContainer(c.Id).remove({ force: true });
      removed++;
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode === 404) continue;
      logger("nodeagent").warn(
        "Cannot remove container {id} of pod {pod} an earlier run on Docker left: {error}",
        { id: c.Id.slice(0, 12), pod: c.Labels["inferx.pod"], error: (err as Error).message },
      );
    }
  }
  return removed;
}

/** The CPUs and memory of the engine's host (undefined when it does not answer). */
export async function dockerHostSize(
  socketPath = DOCKER_SOCKET,
): Promise<{ cpuMillis: number; memMB: number } | undefined> {
  try {
    const info = await answered(
      new Docker({ socketPath, timeout: DOCKER_PING_MS }).info(),
      DOCKER_PING_MS,
    );
    return { cpuMillis: info.NCPU * 1000, memMB: Math.floor(info.MemTotal / 1048576) };
  } catch {
    return undefined;
  }
}

/**
 * Why the Docker runtime takes no snapshots. `docker checkpoint` needs an
 * experimental daemon, and even there Docker restores a checkpoint only into
 * the container it came from: `docker start --checkpoint-dir` is refused
 * ("custom checkpointdir is not supported") and a checkpoint holds none of
 * the container's filesystem changes. Copies of one snapshot then take a
 * `docker commit` and writes into the daemon's private data root, and were
 * measured 10x slower than the process runtime's (docs/standby.md).
 */
export async function dockerSnapshotReason(
  socketPath = DOCKER_SOCKET,
): Promise<string> {
  let experimental: boolean | undefined;
  try {
    const docker = new Docker({ socketPath, timeout: DOCKER_PING_MS });
    experimental = (await answered(docker.info(), DOCKER_PING_MS)).ExperimentalBuild === true;
  } catch {
    // reported below as unknown
  }
  const daemon = experimental === undefined
    ? "the Docker daemon did not say whether it is experimental"
    : experimental
    ? "the Docker daemon is experimental"
    : "the Docker daemon runs without --experimental, which docker checkpoint needs";
  return `No snapshots on the Docker runtime: ${daemon}; Docker restores a checkpoint only into the container it was taken from (start --checkpoint-dir is refused, a checkpoint holds no filesystem changes), so copies would need docker commit and writes into the daemon's data root; use the process runtime`;
}

/** Splits Docker's multiplexed log stream (8-byte frame headers) into text. */
export function demuxLogs(buf: Uint8Array): string {
  let out = "";
  let o = 0;
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  // One decoder a stream: Docker cuts long lines into 16 KiB frames, through a character too.
  const decoders = [new TextDecoder(), new TextDecoder()];
  while (o + 8 <= buf.length && (buf[o] === 1 || buf[o] === 2) && buf[o + 1] === 0) {
    const size = dv.getUint32(o + 4);
    out += decoders[buf[o] - 1].decode(buf.subarray(o + 8, o + 8 + size), { stream: true });
    o += 8 + size;
  }
  if (o === 0) return new TextDecoder().decode(buf); // a TTY stream has no frames
  return out + decoders[0].decode() + decoders[1].decode();
}

/**
 * A container's environment: the function's, then the platform's. Inside
 * the container the GPUs it was given are numbered from 0 (the engine
 * exposes only those), so `CUDA_VISIBLE_DEVICES` names them so; the host's
 * numbers stay in `NVIDIA_VISIBLE_DEVICES`, as the device request has them.
 */
export function containerEnv(spec: PodSpec): Record<string, string> {
  return {
    ...Object.fromEntries(spec.template.envs),
    ...platformEnv(spec),
    CUDA_VISIBLE_DEVICES: spec.gpus.map((_, i) => String(i)).join(","),
    NVIDIA_VISIBLE_DEVICES: spec.gpus.map((g) => gpuId(g.index, true)).join(",") || "none",
    PORT: String(spec.template.port),
    HOST: "0.0.0.0",
  };
}

/** The most of a worker's output its tail (an error's, the log route's) gives. */
const TAIL_MAX_CHARS = 64 * 1024;

/**
 * The engine's network every worker container joins: a bridge with
 * inter-container traffic off (`enable_icc=false`), so that containers reach
 * the outside and are reached through their published ports, never each
 * other. One for every agent of the engine (made by the first that needs it).
 */
export const WORKER_NETWORK = "inferx-workers";

/** The host's name for the bridge of {@linkcode WORKER_NETWORK} (when this release made it). */
export const WORKER_BRIDGE = "inferx-workers";

/** A short tag of a scope for container names (scopes are free text; names are not). */
export function scopeTag(scope: string): string {
  return createHash("sha256").update(scope).digest("hex").slice(0, 8);
}

/** Whether `path` is `dir` or under it (both absolute, normalized). */
const within = (path: string, dir: string) =>
  dir === "/" || path === dir || path.startsWith(`${dir}/`);

/**
 * How `allowed` lets host directory `host` (absolute, normalized) be bound
 * ({@linkcode MountAllow}): a read-write entry itself as asked, in a
 * read-only one read-only whatever was asked (a mount's `readonly` is false
 * unless set), never under a read-write one (whose workers could swap a part
 * of its path for a link); else why not.
 */
export function mountAccess(
  host: string,
  readonly: boolean,
  allowed: readonly MountAllow[],
): { readonly: boolean } | { refusal: string } {
  if (allowed.some((a) => a.rw && a.dir !== host && within(host, a.dir))) {
    return { refusal: "it is under a directory workers may write in, which only binds whole" };
  }
  if (allowed.some((a) => a.rw && a.dir === host)) return { readonly };
  if (!allowed.some((a) => within(host, a.dir))) return { refusal: "not in an allowed directory" };
  return { readonly: true };
}

/** How a container ended: its exit code, and whether its memory limit killed it. */
function ended(info: Docker.ContainerInspectInfo): string {
  const code = `exit code ${info.State.ExitCode}`;
  if (!info.State.OOMKilled) return code;
  const mb = Math.round((info.HostConfig.Memory ?? 0) / 1024 / 1024);
  return `killed by its memory limit (${mb} MB; resources.Mem), ${code}`;
}

/** Runs pods as Docker containers. */
export class DockerRuntime implements PodRuntime {
  readonly name = "docker";
  /** Paused: the cgroup freezer keeps the container's memory and GPU memory. */
  readonly standbyTiers: readonly StandbyTier[] = ["paused"];
  /** Every call but the waits for an exit: silent past {@linkcode DOCKER_ANSWER_MS}, failed. */
  #docker: Docker;
  /** The waits for a container's exit, which last. */
  #waits: Docker;
  #socketPath: string;
  #answerMs: number;
  #options: DockerRuntimeOptions;
  #pods = new Map<string, Entry>();
  /** Containers whose removal failed, by pod: {@linkcode DockerRuntime.sweep} tries again. */
  #leftovers = new Map<string, Docker.Container>();
  #sweeping = false;

  #network?: Promise<void>;

  constructor(options: DockerRuntimeOptions = {}) {
    // The engine takes only an IP address to publish on, and drops anything else silently
    // (a name such as "localhost" published ports on every interface).
    if (options.host !== undefined && !isIP(options.host)) {
      throw new InferxError(
        "invalid",
        `The Docker runtime publishes worker ports on the node's address, which must be an IP address (got "${options.host}")`,
      );
    }
    this.#options = options;
    const socketPath = options.socketPath ?? DOCKER_SOCKET;
    this.#socketPath = socketPath;
    this.#answerMs = options.answerMs ?? DOCKER_ANSWER_MS;
    // A connection of its own each call: the silence limit is the socket's, and the runtime's
    // keep-alive connections, reused, took none (a frozen engine held a stop for ever).
    // (docker-modem takes `agent`; dockerode's types leave it out.)
    this.#docker = new Docker({
      socketPath,
      timeout: this.#answerMs,
      agent: new Agent({ keepAlive: false }),
    } as Docker.DockerOptions);
    this.#waits = new Docker({ socketPath });
  }

  /**
   * Makes {@linkcode WORKER_NETWORK} when the engine has none, and fences
   * its bridge off the node ({@linkcode fenceBridge}) (once; again after a
   * failure).
   */
  #workerNetwork(): Promise<void> {
    this.#network ??= (async () => {
      const network = this.#docker.getNetwork(WORKER_NETWORK);
      let info = await network.inspect().catch(() => undefined);
      if (!info) {
        await this.#docker.createNetwork({
          Name: WORKER_NETWORK,
          Driver: "bridge",
          CheckDuplicate: true,
          Options: {
            "com.docker.network.bridge.enable_icc": "false",
            // Named, so that the node's firewall rule for it is one whatever the engine's
            // network id (the rule outlives the network).
            "com.docker.network.bridge.name": WORKER_BRIDGE,
          },
          Labels: { "inferx.network": "workers" },
        }).catch((err: { statusCode?: number }) => {
          if (err.statusCode !== 409) throw err; // another agent made it meanwhile
        });
        info = await network.inspect();
      }
      // A network an earlier release made has the engine's name for its bridge.
      const bridge = info.Options?.["com.docker.network.bridge.name"] ??
        `br-${String(info.Id).slice(0, 12)}`;
      const problems = await (this.#options.fence ?? fenceBridge)(bridge);
      if (problems.length) {
        logger("nodeagent").warn(
          "Docker workers can reach this node's own ports (the roles' gRPC, etcd) through " +
            "their bridge {bridge}: {problems}. Fence it by hand: {commands}",
          { bridge, problems: problems.join("; "), commands: fenceCommands(bridge) },
        );
      }
    })().catch((err) => {
      this.#network = undefined;
      throw err;
    });
    return this.#network;
  }

  get #scope(): string {
    return this.#options.scope ?? "default";
  }

  get #host(): string {
    return this.#options.host ?? "127.0.0.1";
  }

  get #mountAllow(): MountAllow[] {
    return this.#options.mountAllow ?? [];
  }

  /**
   * Where each of `mounts` really is on the host: the path with every
   * symbolic link followed (Docker follows them when it binds, so a link
   * inside an allowed directory could bind any other), refused unless
   * {@linkcode mountRefusal} allows it (the allowed directories followed
   * too) and it exists. Given to Docker as mounts, not `host:container`
   * text, whose options (`:z`, propagation) a path could add.
   */
  async #mounts(podId: string, mounts: PodSpec["template"]["mounts"]): Promise<Docker.MountConfig> {
    const refuse = (path: string, why: string) =>
      new InferxError(
        "forbidden",
        `Cannot start pod ${podId}: mounting ${path} is not allowed on this node (${why}; ` +
          `INFERX_MOUNT_ALLOW: ${
            this.#mountAllow.map((a) => a.rw ? `${a.dir}:rw` : a.dir).join(",") || "none"
          })`,
      );
    if (!mounts.length) return [];
    const allowed = await Promise.all(
      this.#mountAllow.map(async (a) => ({
        ...a,
        dir: await Deno.realPath(a.dir).catch(() => posix.normalize(a.dir)),
      })),
    );
    const out: Docker.MountConfig = [];
    for (const m of mounts) {
      const asked = mountAccess(posix.normalize(m.hostpath), m.readonly, this.#mountAllow);
      if ("refusal" in asked) throw refuse(m.hostpath, asked.refusal);
      const real = await Deno.realPath(m.hostpath).catch(() => undefined);
      if (real === undefined) throw refuse(m.hostpath, "it does not exist");
      const access = mountAccess(real, m.readonly, allowed);
      if ("refusal" in access) throw refuse(m.hostpath, `it leads to ${real}: ${access.refusal}`);
      out.push({ Type: "bind", Source: real, Target: m.mountpath, ReadOnly: access.readonly });
    }
    return out;
  }

  start(spec: PodSpec): Promise<RunningPod> {
    return this.#start(spec, false);
  }

  /** Starts `spec`'s container; `again`: after the workers' network was made again. */
  async #start(spec: PodSpec, again: boolean): Promise<RunningPod> {
    const t = spec.template;
    const mounts = await this.#mounts(spec.podId, t.mounts);
    const port = `${t.port}/tcp`;
    const env = containerEnv(spec);
    const name = `inferx-${scopeTag(this.#scope)}-${spec.podId}`;
    let container: Docker.Container;
    try {
      await this.#workerNetwork();
      // Bounded by the start's own time, not the silence limit: a large image or a loaded engine
      // may take longer than that to make a container, and is no engine out of reach.
      const creating = this.#waits.createContainer({
        // Its agent's scope in the name too: agents of several scopes may share one engine.
        name,
        Image: t.image,
        Cmd: t.commands.length ? t.commands : undefined,
        Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
        Labels: {
          "inferx.scope": this.#scope,
          "inferx.pod": spec.podId,
          "inferx.func": spec.func,
          "inferx.version": String(spec.funcVersion),
          // What a restarted agent asks before it takes the container for a ready worker.
          "inferx.probe": t.probe,
        },
        ExposedPorts: { [port]: {} },
        HostConfig: {
          NetworkMode: WORKER_NETWORK,
          Init: true,
          NanoCpus: spec.cpuMillis * 1_000_000,
          Memory: spec.memMB * 1024 * 1024,
          // No swap beyond it (the engine's default doubles it): the limit is the limit.
          MemorySwap: spec.memMB * 1024 * 1024,
          // Raw sockets let a worker answer ARP for another's address on the workers' bridge
          // (and take its traffic); device nodes would land in its writable mounts. Neither is
          // a model server's, and no setuid program in its image gains privileges.
          CapDrop: ["NET_RAW", "MKNOD"],
          SecurityOpt: ["no-new-privileges:true"],
          // Processes and threads of its own: a worker that forks without end cannot take the
          // node's PIDs from the others and the agent (a worker's runtime has a few hundred).
          PidsLimit: WORKER_PIDS_LIMIT,
          // Its output, as the process runtime's: a chatty worker fills no disk.
          LogConfig: { Type: "json-file", Config: { "max-size": "8m", "max-file": "2" } },
          PortBindings: { [port]: [{ HostIp: this.#host, HostPort: "" }] },
          Mounts: mounts,
          DeviceRequests: spec.gpus.length
            ? [{
              Driver: "nvidia",
              DeviceIDs: spec.gpus.map((g) => gpuId(g.index, true)),
              Capabilities: [["gpu"]],
            }]
            : undefined,
        },
      });
      container = await answered(creating, t.startupTimeoutS * 1000).catch((err) => {
        // Made after the wait gave up, it would be nobody's: the sweep removes it.
        if (err instanceof Silent) this.#leftovers.set(spec.podId, this.#docker.getContainer(name));
        throw err;
      });
      // Calls on it go by the silence limit from here.
      container = this.#docker.getContainer(container.id);
    } catch (err) {
      this.#engineGone(spec.podId, err);
      const message = (err as { json?: { message?: string } }).json?.message ??
        (err as Error).message;
      throw new InferxError(
        "worker_failed",
        `Cannot create the container of pod ${spec.podId} from image ${t.image}: ${message}`,
        { cause: err },
      );
    }
    const entry = await this.#track(spec.podId, container, true);
    try {
      // As the create: bounded by the start's time (a GPU container's hooks take their time).
      await answered(this.#waits.getContainer(container.id).start(), t.startupTimeoutS * 1000);
      const endpoint = await this.#endpoint(container, port);
      entry.endpoint = endpoint;
      await waitForProbe(this.#host, Number(endpoint.split(":").pop()), t.probe, entry.exited, {
        timeoutMs: t.startupTimeoutS * 1000,
        intervalMs: this.#options.probeIntervalMs,
        ownNetwork: "container",
      });
      entry.ready = true;
      return { podId: spec.podId, endpoint, exited: entry.exited };
    } catch (err) {
      entry.stopping = true;
      const tail = await this.logs(spec.podId, 20);
      await this.#remove(spec.podId, container);
      this.#pods.delete(spec.podId);
      // The engine lost the workers' network (`docker network prune` removes it while no
      // worker runs): made again, and the start tried once more.
      if (!again && /network \S+ not found/i.test((err as Error).message)) {
        this.#network = undefined;
        return await this.#start(spec, true);
      }
      this.#engineGone(spec.podId, err);
      throw new InferxError("worker_failed", withOutput((err as Error).message, tail));
    }
  }

  /**
   * Throws `unavailable` when `err` is the engine out of reach (no socket, a
   * connection refused or cut, no answer in time), not the worker's failure:
   * no crash loop of the function's grows with an engine's outage.
   */
  #engineGone(podId: string, err: unknown): void {
    const code = (err as { code?: string }).code;
    const text = (err as Error).message ?? String(err);
    // No engine on the socket, or one silent for the start's whole time. A connection cut
    // midway is not taken for it: a call the engine was slow to answer looks the same.
    const gone = err instanceof Silent || code === "ENOENT" || code === "ECONNREFUSED" ||
      /connect (ENOENT|ECONNREFUSED)/.test(text);
    if (!gone) return;
    throw new InferxError(
      "unavailable",
      `Cannot start pod ${podId}: the Docker engine on ${this.#socketPath} is out of reach (${text})`,
      { cause: err },
    );
  }

  async #endpoint(container: Docker.Container, port: string): Promise<string> {
    const info = await container.inspect();
    const binding = info.NetworkSettings.Ports?.[port]?.[0];
    if (!binding) {
      // An ended container has no bindings: say how it ended, not that it publishes nothing.
      if (!info.State.Running) {
        throw new Error(`worker exited before it was ready (${ended(info)})`);
      }
      throw new Error(`container publishes no ${port}`);
    }
    if (binding.HostIp !== this.#host) {
      throw new Error(`the engine published ${port} on ${binding.HostIp}, not on ${this.#host}`);
    }
    return `${this.#host}:${binding.HostPort}`;
  }

  /** Follows a container until it exits; `exited` tells how. */
  #track(podId: string, container: Docker.Container, fresh: boolean): Promise<Entry> {
    const done = Promise.withResolvers<string>();
    const entry: Entry = {
      container,
      endpoint: "",
      ready: !fresh,
      stopping: false,
      exited: done.promise,
      end: done.resolve,
    };
    (async () => {
      // Waits for the next exit ("next-exit" also covers a container not started yet). An
      // engine that dies with the wait open may never end it: the heartbeat looks too (sweep).
      const waited = this.#waits.getContainer(container.id);
      const res = await waited.wait(fresh ? { condition: "next-exit" } : {}).catch((
        err: Error,
      ) => ({
        StatusCode: -1,
        Error: { Message: err.message },
      }));
      if (res.StatusCode === -1) return `lost: ${res.Error?.Message}`;
      const info = await container.inspect().catch(() => undefined);
      return info ? ended(info) : `exit code ${res.StatusCode}`;
    })().then(done.resolve);
    this.#pods.set(podId, entry);
    entry.exited.then((why) => {
      if (!entry.stopping) return this.#tellExit(podId, entry, why);
    });
    return Promise.resolve(entry);
  }

  /** Tells the agent of an exit nobody asked for, once, and removes the container. */
  async #tellExit(podId: string, entry: Entry, why: string): Promise<void> {
    if (this.#pods.get(podId) !== entry || !entry.ready) return;
    const tail = await this.logs(podId, 20);
    if (this.#pods.get(podId) !== entry) return;
    this.#pods.delete(podId);
    await this.#remove(podId, entry.container);
    this.#options.onExit?.(podId, withOutput(why, tail));
  }

  async stop(podId: string, graceMs = 5000): Promise<void> {
    const entry = this.#pods.get(podId);
    if (!entry) return;
    // Ended on its own a moment before (killed by its memory limit while a call ran, its pod
    // then given back as failed and stopped): its exit is told as its own, how included,
    // not taken for this stop's. The engine tells of an exit later than the call saw it.
    const info = entry.ready ? await entry.container.inspect().catch(() => undefined) : undefined;
    if (info && !info.State.Running && !entry.stopping) {
      return await this.#tellExit(podId, entry, ended(info));
    }
    entry.stopping = true;
    await entry.container.unpause().catch(() => {}); // a frozen container cannot stop
    // The engine answers once the container is down, up to the grace period later: asked on the
    // client without the silence limit, and given the grace and that limit in all.
    const t = Math.ceil(graceMs / 1000);
    await answered(
      this.#waits.getContainer(entry.container.id).stop({ t }),
      t * 1000 + this.#answerMs,
    )
      .catch(() => {});
    // Killed by its memory limit a moment before the engine told of it (the call that saw it
    // fail gave its pod back, which is stopped): said here, where nothing else tells it.
    const after = await entry.container.inspect().catch(() => undefined);
    if (after?.State.OOMKilled) {
      logger("nodeagent").warn("Pod {pod}: {why}", { pod: podId, why: ended(after) });
    }
    await this.#remove(podId, entry.container);
    this.#pods.delete(podId);
  }

  /**
   * Removes a pod's container (killed first if it still runs); when the
   * engine does not answer, keeps it for {@linkcode DockerRuntime.sweep}.
   * Returns whether it is gone.
   */
  async #remove(podId: string, container: Docker.Container): Promise<boolean> {
    try {
      await container.remove({ force: true });
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode !== 404) {
        if (!this.#leftovers.has(podId)) {
          logger("nodeagent").warn(
            "Cannot remove the container of pod {pod} ({error}); trying again with each heartbeat",
            { pod: podId, error: (err as Error).message },
          );
        }
        this.#leftovers.set(podId, container);
        return false;
      }
    }
    if (this.#leftovers.delete(podId)) {
      logger("nodeagent").info("Removed the container pod {pod} left", { pod: podId });
    }
    return true;
  }

  async sweep(): Promise<void> {
    // One at a time: an engine that hangs holds one sweep, not one more every heartbeat.
    if (this.#sweeping || (!this.#leftovers.size && !this.#pods.size)) return;
    this.#sweeping = true;
    try {
      await this.#endedUnsaid();
      for (const [podId, container] of [...this.#leftovers]) {
        // Taken over again meanwhile (a restart's recovery): not a leftover any more.
        if (this.#pods.get(podId)?.container.id === container.id) {
          this.#leftovers.delete(podId);
          continue;
        }
        await this.#remove(podId, container);
      }
    } finally {
      this.#sweeping = false;
    }
  }

  /**
   * Ends the pods whose container the engine has no longer running or
   * paused: their wait would have told of it, but an engine killed (and
   * started again, having stopped its containers) leaves a wait open that
   * never ends. Pods still starting too: their start would otherwise wait
   * out its whole `startup_timeout` for a worker that is gone. One list of
   * the scope's containers a heartbeat.
   */
  async #endedUnsaid(): Promise<void> {
    const ready = [...this.#pods.values()].filter((e) => !e.stopping);
    if (!ready.length) return;
    let found: Docker.ContainerInfo[];
    try {
      found = await this.#docker.listContainers({
        all: true,
        filters: { label: [`inferx.scope=${this.#scope}`] },
      });
    } catch {
      return; // the engine does not answer now: asked again at the next heartbeat
    }
    const state = new Map(found.map((c) => [c.Id, c.State]));
    for (const entry of ready) {
      const now = state.get(entry.container.id);
      if (now === "running" || now === "paused" || now === "restarting") continue;
      // Made, its start asked for a moment ago: not ended.
      if (now === "created" && !entry.ready) continue;
      const info = await entry.container.inspect().catch(() => undefined);
      // Gone from the engine, or stopped without its wait telling of it.
      if (!info) entry.end("lost: its container is gone from the Docker engine (restarted?)");
      else if (!info.State.Running) entry.end(ended(info));
    }
  }

  async park(podId: string, tier: StandbyTier): Promise<void> {
    const entry = this.#pods.get(podId);
    if (!entry) throw new InferxError("not_found", `Cannot park pod ${podId}: it is not running`);
    if (tier !== "paused") {
      throw new InferxError(
        "unsupported",
        `Cannot park pod ${podId} in ${tier}: the Docker runtime offers paused only`,
      );
    }
    await entry.container.pause();
  }

  async resume(podId: string): Promise<void> {
    const entry = this.#pods.get(podId);
    if (!entry) throw new InferxError("not_found", `Cannot resume pod ${podId}: it is not running`);
    try {
      await entry.container.unpause();
    } catch (err) {
      // Unpaused from outside (`docker unpause`): running, it is resumed.
      const state = await entry.container.inspect().then((i) => i.State, () => undefined);
      if (!state?.Running || state.Paused) throw err;
    }
  }

  async logs(podId: string, lines = 50): Promise<string> {
    const entry = this.#pods.get(podId);
    if (!entry) return "";
    try {
      const buf = await entry.container.logs({
        stdout: true,
        stderr: true,
        tail: lines,
        follow: false,
      });
      // Its last 64 KiB at most, as the process runtime's tail: one endless line is not an error.
      return demuxLogs(new Uint8Array(buf as unknown as ArrayBuffer)).slice(-TAIL_MAX_CHARS);
    } catch {
      return "";
    }
  }

  /** Adopts running containers of this scope; removes the ones that stopped. */
  async recover(): Promise<{ adopted: AdoptedPod[]; removed: number }> {
    const list = [];
    const legacy = new Set<string>();
    for (const scope of [this.#scope, ...this.#options.legacyScopes ?? []]) {
      const found = await this.#docker.listContainers({
        all: true,
        filters: { label: [`inferx.scope=${scope}`] },
      });
      if (scope !== this.#scope) { for (const c of found) legacy.add(c.Id); }
      list.push(...found);
    }
    const portOf = (c: Docker.ContainerInfo) =>
      c.Ports.find((p) => p.PublicPort && p.IP === this.#host) ?? c.Ports.find((p) => p.PublicPort);
    // A running worker that does not answer its probe was still starting when the agent went
    // (or hangs): not taken for ready, it is removed and its pod started again. Probed
    // RECOVER_PROBES at a time (one at a time, a hundred hung workers held the agent's start
    // for minutes, its node taken for lost meanwhile), and a worker that did not answer is
    // asked once more (busy a moment, perhaps).
    const answers = new Map<string, boolean>();
    const probeAll = (cs: Docker.ContainerInfo[]) =>
      forEachLimit(cs, RECOVER_PROBES, async (c) => {
        const port = portOf(c);
        const probe = c.Labels["inferx.probe"];
        answers.set(
          c.Id,
          c.State !== "running" || probe === undefined || (port !== undefined &&
            await httpCall(this.#host, port.PublicPort, probe, { timeoutMs: 2000 }).then(
              (r) => r.status >= 200 && r.status < 300,
              () => false,
            )),
        );
      });
    await probeAll(list);
    await probeAll(list.filter((c) => !answers.get(c.Id)));
    const adopted: AdoptedPod[] = [];
    let removed = 0;
    for (const c of list) {
      const podId = c.Labels["inferx.pod"];
      const container = this.#docker.getContainer(c.Id);
      const port = portOf(c);
      if ((c.State === "running" || c.State === "paused") && answers.get(c.Id)) {
        const entry = await this.#track(podId, container, false);
        entry.endpoint = port ? `${this.#host}:${port.PublicPort}` : "";
        adopted.push({
          podId,
          endpoint: entry.endpoint,
          paused: c.State === "paused",
          ...(legacy.has(c.Id) ? { legacy: true } : {}),
        });
      } else if (legacy.has(c.Id)) {
        // Maybe another installation's (one on an earlier version): not removed.
      } else if (await this.#remove(podId, container)) {
        removed++;
      }
    }
    return { adopted, removed };
  }

  forget(podId: string): void {
    this.#pods.delete(podId);
  }

  /** Whether a pod's container is frozen (paused tier). */
  async isPaused(podId: string): Promise<boolean> {
    const entry = this.#pods.get(podId);
    return entry ? (await entry.container.inspect()).State.Paused : false;
  }
}
