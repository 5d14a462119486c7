/**
 * A node's snapshots: after a function version's first fresh pod on this
 * node is ready and has answered its sample query, the runtime dumps it
 * (leaving it running) into `{dir}/{tenant}/{namespace}/{name}`; later cold
 * starts of that version here restore the image instead of running the
 * start command.
 *
 * Each snapshot is recorded in the store (`snapshot` objects) so the
 * scheduler knows where restores are possible and users can list them. A
 * snapshot belongs to one function version: a new version or a delete of
 * the function removes it. Images share a disk budget; the least recently
 * used go first. A dump CRIU refuses is recorded once (`Failed`, with CRIU's
 * reason) and that version keeps starting fresh here; a dump that ran out of
 * disk or time leaves nothing behind and is tried again at the next fresh start.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { ConflictError, InferxError, NotFoundError } from "../common/errors.ts";
import { stableJson } from "../common/json.ts";
import { logger } from "../common/log.ts";
import type { PodInfo } from "../model/cluster.ts";
import { funcId, isValidName } from "../model/keys.ts";
import { decodeStoredUserObject } from "../model/schemas.ts";
import { trafficSplit } from "../model/versions.ts";
import { decodeSnapshot, type SnapshotInfo, snapshotName } from "../model/snapshot.ts";
import { type Informer, startInformer } from "../rpc/informer.ts";
import type { MetaClient, ObjectRef } from "../rpc/types.ts";
import type { PodRuntime } from "./runtime.ts";
import { CriuKilled } from "./criu.ts";
import { privateDir } from "../common/private_dir.ts";

const log = logger("snapshots");

/** Dumps of one version a CRIU killed from outside may cut short here before it is recorded failed. */
const MAX_KILLED_DUMPS = 3;

/** What a snapshot manager needs of its runtime. */
export type SnapshotRuntime = Required<Pick<PodRuntime, "snapshot" | "footprintBytes">>;

/** Options for {@linkcode SnapshotManager}. */
export interface SnapshotManagerOptions {
  meta: MetaClient;
  /** This node's name. */
  node: string;
  /** Where images go. */
  dir: string;
  /** Disk all images may take together (MB). */
  diskBudgetMB: number;
  runtime: SnapshotRuntime;
  /** Called after the set of snapshots changed (to refresh the node record). */
  onChange?(): void;
}

/** A snapshot this node holds. */
export interface LocalSnapshot {
  ref: ObjectRef;
  info: SnapshotInfo;
  /** Its image directory. */
  dir: string;
}

/** The pod fields that name a function version. */
type VersionOf = Pick<PodInfo, "tenant" | "namespace" | "func" | "funcVersion">;

/** What identifies a worker definition: its template, as stable JSON, hashed. */
export function templateDigest(template: PodInfo["template"]): string {
  return createHash("sha256").update(stableJson(template)).digest("hex");
}

const MB = 1024 * 1024;

/** Whether an error says the disk filled up. */
export function isDiskFull(err: unknown): boolean {
  return /No space left on device|ENOSPC|Disk quota exceeded/i.test(String(err));
}

/** Options for {@linkcode SnapshotManager.take}. */
export interface TakeOptions {
  /** Whether the pod should still be running (a dump of a pod being stopped fails for that alone). */
  alive?: () => boolean;
}

/** One node's snapshots. */
export class SnapshotManager {
  #o: SnapshotManagerOptions;
  /** By store key `tenant/namespace/name`. */
  #local = new Map<string, LocalSnapshot>();
  /** The versions of each function (`tenant/namespace/name`) that serve calls. */
  #versions = new Map<string, Set<number>>();
  /** Function versions being dumped now. */
  #taking = new Set<string>();
  /** How many dumps of each version (key) here a CRIU killed from outside has cut short. */
  #killed = new Map<string, number>();
  /** Snapshots being restored from, with how many restores each: never removed under them. */
  #held = new Map<LocalSnapshot, number>();
  /** Held snapshots already forgotten, whose images go when their last restore ends. */
  #doomed = new Set<LocalSnapshot>();
  #informer?: Informer;

  constructor(options: SnapshotManagerOptions) {
    this.#o = options;
  }

  #key(v: VersionOf): string {
    return refKey(this.#ref(v));
  }

  #ref(v: VersionOf): ObjectRef {
    return {
      type: "snapshot",
      tenant: v.tenant,
      namespace: v.namespace,
      name: snapshotName(v.func, v.funcVersion, this.#o.node),
    };
  }

  #dirOf(ref: ObjectRef): string {
    return `${this.#o.dir}/${ref.tenant}/${ref.namespace}/${ref.name}`;
  }

  /**
   * Loads this node's snapshot records and reconciles them with the disk
   * (records without an image go, images without a record go, half-written
   * dumps go), then follows functions to drop snapshots of old versions.
   */
  async start(): Promise<void> {
    privateDir(this.#o.dir);
    const { items } = await this.#o.meta.list("snapshot");
    const keep = new Set<string>();
    for (const rec of items) {
      const info = decodeSnapshot(rec.value);
      if (info.node !== this.#o.node) continue;
      const ref: ObjectRef = {
        type: "snapshot",
        tenant: rec.tenant,
        namespace: rec.namespace,
        name: rec.name,
      };
      const dir = this.#dirOf(ref);
      if (info.state === "Ready" && !await exists(`${dir}/inferx.json`)) {
        log.warn("Snapshot {name}: its image is gone; removing the record", { name: rec.name });
        await this.#deleteRecord(ref);
        continue;
      }
      if (info.budgetMB !== undefined && info.budgetMB !== this.#o.diskBudgetMB) {
        log.info("Snapshot {name}: tried again under the new disk budget", { name: rec.name });
        await this.#deleteRecord(ref);
        continue;
      }
      if (info.state === "Ready") keep.add(dir); // a failed one has no image
      this.#local.set(`${rec.tenant}/${rec.namespace}/${rec.name}`, { ref, info, dir });
    }
    for (const dir of imageDirs(this.#o.dir)) {
      if (!keep.has(dir)) await removeImage(dir);
    }
    // Folders of tenants and namespaces left empty before this start (names only: not, say,
    // the lost+found of a file system mounted here).
    const named = (d: string) => subDirs(d).filter((x) => isValidName(x.slice(d.length + 1)));
    for (const t of named(this.#o.dir)) {
      for (const n of named(t)) await Deno.remove(n).catch(() => {});
      await Deno.remove(t).catch(() => {});
    }
    this.#informer = await startInformer(this.#o.meta, "function", {
      upsert: (rec) => {
        const o = decodeStoredUserObject(rec.value, rec.revision);
        if (o.type !== "function") return;
        const id = funcId(o.tenant, o.namespace, o.name);
        // The versions that serve calls: those a `traffic` split (inline only) gives a share,
        // else the newest and the stable one a canary leaves the rest to (its cold starts
        // restore too); the specs kept of others (the stable one under a split) serve none.
        const inline = o.spec.policy?.kind === "inline" ? o.spec.policy.policy : undefined;
        const live = new Set(
          inline?.traffic
            ? trafficSplit(o, inline).map((v) => v.version)
            : [o.version, ...(o.olderVersions ?? []).map((v) => v.version)],
        );
        this.#versions.set(id, live);
        this.#dropWhere(
          (s) => funcOf(s.info) === id && !live.has(s.info.funcVersion),
          "its version no longer serves",
        );
      },
      remove: (ref) => {
        const id = funcId(ref.tenant, ref.namespace, ref.name);
        this.#versions.delete(id);
        this.#dropWhere((s) => funcOf(s.info) === id, "the function was deleted");
      },
    });
    // Functions deleted while this agent was away: no event will tell.
    this.#dropWhere((s) => !this.#versions.has(funcOf(s.info)), "the function was deleted");
    this.#evictFor(0); // a budget lowered since
  }

  /** Stops following functions. */
  stop(): void {
    this.#informer?.stop();
  }

  /** The restorable snapshot of the pod's function version on this node, if any. */
  usable(pod: VersionOf & Pick<PodInfo, "template">): LocalSnapshot | undefined {
    const s = this.#local.get(this.#key(pod));
    if (s?.info.state !== "Ready") return undefined;
    if (s.info.template !== templateDigest(pod.template)) {
      // Another worker under the same name and version (a function made again): not this.
      this.discard(s, "it was taken from another worker template").catch(() => {});
      return undefined;
    }
    return s;
  }

  /**
   * {@linkcode usable}, held for a restore: until {@linkcode release}, its
   * image is not removed (an eviction for another image, a new version or
   * a delete of the function forget it at once and remove it after).
   */
  hold(pod: VersionOf & Pick<PodInfo, "template">): LocalSnapshot | undefined {
    const s = this.usable(pod);
    if (!s) return undefined;
    this.#held.set(s, (this.#held.get(s) ?? 0) + 1);
    // The most recently used from now, for the images evicted meanwhile.
    s.info = { ...s.info, lastUsedAt: Date.now() };
    return s;
  }

  /** A restore from `s` ({@linkcode hold}) ended. */
  release(s: LocalSnapshot): void {
    const n = (this.#held.get(s) ?? 1) - 1;
    if (n > 0) return void this.#held.set(s, n);
    this.#held.delete(s);
    // Unless a new image of the same name was taken into its folder meanwhile.
    const replaced = () =>
      [...this.#local.values()].some((x) => x.dir === s.dir && x.info.state === "Ready");
    if (this.#doomed.delete(s) && !replaced()) removeImage(s.dir);
  }

  /** Whether a fresh pod of this version should be snapshotted: none held, none failed, none under way. */
  wants(pod: VersionOf): boolean {
    const key = this.#key(pod);
    const live = this.#versions.get(funcId(pod.tenant, pod.namespace, pod.func));
    return !this.#local.has(key) && !this.#taking.has(key) &&
      (live === undefined || live.has(pod.funcVersion));
  }

  /** Records a restore from `s` (for least-recently-used removal). */
  async used(s: LocalSnapshot): Promise<void> {
    s.info = { ...s.info, lastUsedAt: Date.now(), restores: s.info.restores + 1 };
    // Dropped while it was restored (a new version, a delete): its record is not made again.
    await this.#write(s).catch((err) =>
      log.warn("Cannot record the use of snapshot {name}: {error}", {
        name: s.ref.name,
        error: String(err),
      })
    );
  }

  /** Removes a snapshot whose image could not be restored. */
  async discard(s: LocalSnapshot, why: string): Promise<void> {
    log.warn("Removing snapshot {name}: {why}", { name: s.ref.name, why });
    await this.#remove(s);
  }

  /**
   * Gives up snapshots of `pod`'s version here: a copy restored from `s`
   * would not serve (its restore hook failed), which another snapshot of the
   * same worker would not change. Its image goes; the version is recorded
   * `Failed` with `why`, and keeps starting fresh, with no dump taken again.
   */
  async refuse(s: LocalSnapshot, pod: PodInfo, why: string): Promise<void> {
    await this.#remove(s);
    const known = this.#versions.has(funcId(pod.tenant, pod.namespace, pod.func));
    await this.#fail(pod, known, s.ref, why);
  }

  /**
   * Snapshots `pod` (running, fresh, answered its sample query) unless this
   * version already has one here. Never throws: returns a note saying why
   * no snapshot was taken, or undefined when one was.
   */
  take(pod: PodInfo, options: TakeOptions = {}): Promise<string | undefined> {
    const key = this.#key(pod);
    if (!this.wants(pod)) return Promise.resolve(undefined);
    if (this.dumping()) return Promise.resolve(BUSY);
    this.#taking.add(key);
    return this.#take(pod, key, options.alive ?? (() => true))
      // Whatever else fails (a write of its record, say), the pod it was taken from runs on.
      .catch((err) => `No snapshot taken: ${(err as Error).message}`)
      .finally(() => this.#taking.delete(key));
  }

  /**
   * Whether a dump runs on this node now. Dumps run one at a time, and a
   * pod is Ready only once its own is done: a pod that would wait for
   * another's (a large model's, for minutes) takes none, and its version
   * is snapshotted at a later fresh start.
   */
  dumping(): boolean {
    return this.#taking.size > 0;
  }

  async #take(pod: PodInfo, key: string, alive: () => boolean): Promise<string | undefined> {
    if (!alive()) return "No snapshot taken: the pod was stopped";
    const known = this.#versions.has(funcId(pod.tenant, pod.namespace, pod.func));
    const ref = this.#ref(pod);
    const dir = this.#dirOf(ref);
    // A function made again under its old name and version while a restore reads the old one's
    // image from this directory: not replaced under it (tried again at the next fresh start).
    if ([...this.#doomed].some((s) => s.dir === dir)) {
      return "No snapshot taken: an image of the same name is being restored";
    }
    const budget = this.#o.diskBudgetMB * MB;
    // What the image will hold, from its anonymous memory: over the budget, the dump is not
    // tried, and the version is not tried again under this budget (each fresh start would send
    // its sample query again first, for nothing).
    const estimate = await this.#o.runtime.footprintBytes(pod.id).catch(() => 0);
    if (estimate > budget) {
      return await this.#fail(
        pod,
        known,
        ref,
        `its memory (${
          mb(estimate)
        } MB) exceeds the snapshot disk budget (INFERX_SNAPSHOT_DISK_MB=${this.#o.diskBudgetMB})`,
        this.#o.diskBudgetMB,
      );
    }
    this.#evictFor(estimate, key);
    const partial = `${dir}.partial-${pod.id}`;
    let taken;
    try {
      await Deno.mkdir(partial.slice(0, partial.lastIndexOf("/")), { recursive: true });
      taken = await this.#o.runtime.snapshot(pod.id, partial);
    } catch (err) {
      await Deno.remove(partial, { recursive: true }).catch(() => {});
      const reason = (err as Error).message;
      if (!alive()) return "No snapshot taken: the pod was stopped while it was dumped";
      if (isDiskFull(err)) {
        log.warn("Snapshot of pod {pod} ran out of disk; nothing kept: {error}", {
          pod: pod.id,
          error: reason,
        });
        return `No snapshot taken: the disk filled up while dumping (${reason})`;
      }
      if (err instanceof InferxError && err.code === "worker_failed") {
        // Its worker died while it was dumped: tried again at the next fresh start.
        return `No snapshot taken: ${reason}`;
      }
      if (err instanceof CriuKilled) {
        // Ended from outside (the OOM killer, an operator): nothing said against the worker,
        // tried again, up to a few times (a dump the OOM killer ends for what it takes would
        // be ended at every fresh start, and the agent could be the next it picks).
        const kills = (this.#killed.get(key) ?? 0) + 1;
        this.#killed.set(key, kills);
        if (kills >= MAX_KILLED_DUMPS) {
          return await this.#fail(pod, known, ref, `${reason} (${kills} times: not tried again)`);
        }
        log.warn("Snapshot of pod {pod} cut short; tried again later: {error}", {
          pod: pod.id,
          error: reason,
        });
        return `No snapshot taken: ${reason}`;
      }
      if (err instanceof InferxError && err.code === "timeout") {
        // A slow dump (a large worker at a low priority) may finish another time: not recorded.
        log.warn("Snapshot of pod {pod} timed out; tried again later: {error}", {
          pod: pod.id,
          error: reason,
        });
        return `No snapshot taken: the dump timed out (${reason})`;
      }
      return await this.#fail(pod, known, ref, reason);
    }
    if (taken.bytes > budget) {
      await Deno.remove(partial, { recursive: true }).catch(() => {});
      return await this.#fail(
        pod,
        known,
        ref,
        `its image (${
          mb(taken.bytes)
        } MB) exceeds the snapshot disk budget (INFERX_SNAPSHOT_DISK_MB=${this.#o.diskBudgetMB})`,
        this.#o.diskBudgetMB,
      );
    }
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    try {
      await Deno.rename(partial, dir);
    } catch (err) {
      await Deno.remove(partial, { recursive: true }).catch(() => {});
      return `No snapshot taken: cannot keep its image (${(err as Error).message})`;
    }
    const now = Date.now();
    const info = this.#info(pod, {
      state: "Ready",
      bytes: taken.bytes,
      dumpMs: Math.round(taken.dumpMs),
      createdAt: now,
      lastUsedAt: now,
    });
    if (this.#changed(pod, known)) {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      return "No snapshot kept: the function changed or was deleted while it was taken";
    }
    const kept: LocalSnapshot = { ref, info, dir };
    this.#local.set(key, kept);
    this.#evictFor(0, key);
    try {
      await this.#write(kept);
    } catch (err) {
      this.#local.delete(key);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      return `No snapshot kept: cannot record it (${(err as Error).message})`;
    }
    log.info("Snapshot of {func} v{version} taken from pod {pod}: {mb} MB in {ms} ms", {
      func: pod.func,
      version: pod.funcVersion,
      pod: pod.id,
      mb: mb(taken.bytes),
      ms: Math.round(taken.dumpMs),
    });
    this.#o.onChange?.();
    return undefined;
  }

  /** The function changed (another version) or was deleted since a take that found it `known` began. */
  #changed(pod: PodInfo, known: boolean): boolean {
    const live = this.#versions.get(funcId(pod.tenant, pod.namespace, pod.func));
    return live === undefined ? known : !live.has(pod.funcVersion);
  }

  /**
   * Records that this version cannot be snapshotted here, once; returns the
   * note. `budgetMB`: it failed for its size under this disk budget.
   */
  async #fail(
    pod: PodInfo,
    known: boolean,
    ref: ObjectRef,
    reason: string,
    budgetMB?: number,
  ): Promise<string> {
    if (this.#changed(pod, known)) return `No snapshot taken: ${reason}`; // nothing to record
    log.warn("Cannot snapshot {func} v{version} (pod {pod}); it keeps starting fresh: {error}", {
      func: pod.func,
      version: pod.funcVersion,
      pod: pod.id,
      error: reason,
    });
    const info = this.#info(pod, {
      state: "Failed",
      createdAt: Date.now(),
      error: reason.slice(0, 2000),
      ...(budgetMB === undefined ? {} : { budgetMB }),
    });
    const failed: LocalSnapshot = { ref, info, dir: this.#dirOf(ref) };
    this.#local.set(this.#key(pod), failed);
    await this.#write(failed).catch(() => {});
    this.#o.onChange?.();
    return `No snapshot taken: ${reason}`;
  }

  /** The record of the pod's function version on this node. */
  #info(
    pod: PodInfo,
    fields: Pick<SnapshotInfo, "state" | "createdAt"> & Partial<SnapshotInfo>,
  ): SnapshotInfo {
    return {
      tenant: pod.tenant,
      namespace: pod.namespace,
      func: pod.func,
      funcVersion: pod.funcVersion,
      node: this.#o.node,
      sourcePod: pod.id,
      template: templateDigest(pod.template),
      bytes: 0,
      dumpMs: 0,
      restores: 0,
      ...fields,
    };
  }

  /** Disk the images take (bytes). */
  usedBytes(): number {
    let n = 0;
    for (const s of this.#local.values()) n += s.info.bytes;
    return n;
  }

  /** Removes least recently used images (never `keep`) until `more` bytes fit the budget. */
  #evictFor(more: number, keep?: string): void {
    const budget = this.#o.diskBudgetMB * MB;
    const ready = [...this.#local.entries()]
      .filter(([k, s]) => k !== keep && s.info.state === "Ready" && !this.#held.has(s))
      .sort((a, b) => (a[1].info.lastUsedAt ?? 0) - (b[1].info.lastUsedAt ?? 0));
    let used = this.usedBytes();
    for (const [, s] of ready) {
      if (used + more <= budget) break;
      used -= s.info.bytes;
      log.info("Removing snapshot {name} (least recently used) to stay within {budget} MB", {
        name: s.ref.name,
        budget: this.#o.diskBudgetMB,
      });
      this.#remove(s);
    }
  }

  #dropWhere(pred: (s: LocalSnapshot) => boolean, why: string): void {
    for (const s of [...this.#local.values()]) {
      if (!pred(s)) continue;
      log.info("Removing snapshot {name}: {why}", { name: s.ref.name, why });
      this.#remove(s);
    }
  }

  /**
   * Forgets a snapshot at once; its image and record go in the background
   * (its image once the restores holding it have ended).
   */
  #remove(s: LocalSnapshot): Promise<void> {
    const key = refKey(s.ref);
    if (this.#local.get(key) === s) this.#local.delete(key);
    this.#o.onChange?.();
    const held = this.#held.has(s);
    if (held) this.#doomed.add(s);
    return Promise.all([
      held ? undefined : removeImage(s.dir),
      this.#deleteRecord(s.ref),
    ]).then(() => {});
  }

  async #deleteRecord(ref: ObjectRef): Promise<void> {
    await this.#o.meta.delete(ref).catch((err) => {
      if (!(err instanceof NotFoundError)) {
        log.warn("Cannot remove snapshot record {name}: {error}", {
          name: ref.name,
          error: String(err),
        });
      }
    });
  }

  /**
   * Creates or replaces the record of `s` (compare-and-swap, retried on
   * conflicts) while this node still keeps it: one dropped meanwhile (its
   * function deleted, a new version) has its record removed, not made again.
   */
  async #write(s: LocalSnapshot): Promise<void> {
    const { ref, info } = s;
    const kept = () => this.#local.get(refKey(ref)) === s;
    for (let attempt = 0; attempt < 5; attempt++) {
      if (!kept()) return;
      const cur = await this.#o.meta.get(ref);
      if (!kept()) return;
      try {
        if (!cur) {
          await this.#o.meta.create({ ...ref, object: info });
          // Dropped while it was made: the drop's delete may have come first.
          if (!kept()) await this.#deleteRecord(ref);
        } else await this.#o.meta.update({ ...ref, object: info, revision: cur.revision });
        return;
      } catch (err) {
        if (!(err instanceof ConflictError) || attempt === 4) throw err;
      }
    }
  }

  /** This node's snapshots for its node record. */
  summary(): { diskUsedMB: number; items: NodeSnapshotItem[] } {
    return {
      diskUsedMB: mb(this.usedBytes()),
      items: [...this.#local.values()].map((s) => ({
        func: funcOf(s.info),
        version: s.info.funcVersion,
        state: s.info.state,
        sizeMB: mb(s.info.bytes),
        dumpMs: s.info.dumpMs,
        lastUsedAt: s.info.lastUsedAt,
        error: s.info.error,
      })),
    };
  }
}

/** Where this node keeps the snapshot of record `ref` (`tenant/namespace/name`). */
function refKey(ref: ObjectRef): string {
  return `${ref.tenant}/${ref.namespace}/${ref.name}`;
}

/** One snapshot as a node record lists it. */
export interface NodeSnapshotItem {
  func: string;
  version: number;
  state: string;
  sizeMB: number;
  dumpMs: number;
  lastUsedAt?: number;
  error?: string;
}

/** The note of a pod not snapshotted because another pod's dump runs. */
export const BUSY =
  "No snapshot taken: another pod is being dumped on this node (tried at a later fresh start)";

const funcOf = (s: SnapshotInfo) => funcId(s.tenant, s.namespace, s.func);
const mb = (bytes: number) => Math.round((bytes / MB) * 10) / 10;

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Image directories under `root` (`{tenant}/{namespace}/{name}`), half-written ones included. */
function imageDirs(root: string): string[] {
  const out: string[] = [];
  for (const t of subDirs(root)) {
    for (const n of subDirs(t)) out.push(...subDirs(n));
  }
  return out;
}

/** The folders in `d` (none when it cannot be read). */
function subDirs(d: string): string[] {
  try {
    return [...Deno.readDirSync(d)].filter((e) => e.isDirectory).map((e) => `${d}/${e.name}`);
  } catch {
    return [];
  }
}

/**
 * Removes an image's folder, then its namespace's and tenant's folders if
 * that left them empty (a function's deletion leaves nothing behind; one
 * being written keeps them, as do other images).
 */
async function removeImage(dir: string): Promise<void> {
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  const ns = dir.slice(0, dir.lastIndexOf("/"));
  if (await Deno.remove(ns).then(() => true, () => false)) {
    await Deno.remove(ns.slice(0, ns.lastIndexOf("/"))).catch(() => {});
  }
}
