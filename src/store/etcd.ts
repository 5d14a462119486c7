/**
 * etcd `MetaStore` on `npm:etcd3`: compare-and-swap through transactions on
 * the mod revision, prefix watches that resume after a disconnect from one
 * past the last event they delivered, and a `CompactedError` when etcd
 * cancels a watch (it does so when the start revision was compacted): the
 * caller lists again.
 *
 * The client library resumes a watch from the revision in the header of the
 * last response it saw, and a watch's creation (or a catch-up batch) carries
 * the store's current revision before the events up to it have been sent: a
 * reconnect in between skipped them for good. So the resume revision is
 * kept here and written into each (re)create request; a progress
 * notification (etcd sends them to a synced watch) moves it up, so that a
 * watch of a quiet prefix does not resume from a revision compacted since.
 * Watch streams carry no deadline (a deadline on them ended every stream
 * after `timeoutMs`). A watch etcd cancelled is not cancelled again: the
 * library has forgotten it, and its answer to a second cancel ended the
 * process.
 *
 * etcd keeps every revision until it is compacted: the state service compacts
 * it ({@linkcode EtcdStore.startCompaction}), keeping the newest ones. A
 * refusal that no retry can change (etcd out of space, a request past its
 * size) is neither retried nor counted by the client's circuit breaker,
 * which would otherwise refuse every other call for a while.
 *
 * @module
 */
import {
  circuitBreaker,
  ConsecutiveBreaker,
  handleWhen,
  isBrokenCircuitError,
  retry,
} from "cockatiel";
import { Etcd3, GRPCResourceExhastedError, type IKeyValue, isRecoverableError, Range } from "etcd3";
import { Buffer } from "node:buffer";
import { logger } from "../common/log.ts";
import {
  AlreadyExistsError,
  ConflictError,
  connectionText,
  InferxError,
  NotFoundError,
} from "../common/errors.ts";
import { GRPC_MAX_MESSAGE_BYTES, grpcChannelOptions } from "../common/grpc_options.ts";
import { forEachLimit } from "../common/limit.ts";
import { cappedBackoff } from "../common/retry.ts";
import {
  CompactedError,
  type KeyValue,
  type ListResult,
  type MetaStore,
  type Watch,
  type WatchOptions,
} from "./types.ts";

/** Options for {@linkcode openEtcdStore}. */
export interface EtcdStoreOptions {
  /** Deadline of each call (ms). @default 5000 */
  timeoutMs?: number;
  /** The most one answer of etcd may hold (bytes); for tests. @default GRPC_MAX_MESSAGE_BYTES */
  maxAnswerBytes?: number;
  /**
   * Deadline of each page of a list (ms): a page may read tens of MiB. At least `timeoutMs`.
   * @default 60000
   */
  listTimeoutMs?: number;
}

function toKv(kv: IKeyValue): KeyValue {
  return {
    key: kv.key.toString(),
    value: kv.value.toString(),
    revision: Number(kv.mod_revision),
    createRevision: Number(kv.create_revision),
  };
}

/**
 * Why a guarded write did not happen, from the `else` branch's read of the
 * key: it is gone (`NotFoundError`) or at another revision (`ConflictError`).
 */
function casFailure(
  verb: string,
  key: string,
  expected: number | undefined,
  res: { responses: { response_range?: { kvs?: IKeyValue[] } }[] },
): Error {
  const cur = res.responses[0]?.response_range?.kvs?.[0];
  if (!cur) return new NotFoundError(`Cannot ${verb} ${key}: it does not exist`);
  const revision = Number(cur.mod_revision);
  return new ConflictError(`Cannot ${verb} ${key}: revision is ${revision}, not ${expected}`, {
    revision,
  });
}

/**
 * A store key as a caller reads it in an outage's error (the store's own
 * names are not theirs): `/registry/function/t/n/f` is `function t/n/f`,
 * the prefix `/registry/namespace/` every namespace.
 */
export function keyText(key: string): string {
  const m = /^\/registry\/([^/]+)\/(.*)$/.exec(key);
  if (!m) return key;
  const rest = m[2].replace(/\/$/, "");
  return rest ? `${m[1]} ${rest}` : `every ${m[1]}`;
}

/**
 * Runs one etcd call; a failure of etcd itself (down, unreachable, the
 * client's circuit breaker open) becomes a retryable `unavailable` error,
 * so that callers answer 503 rather than an internal error; one the breaker
 * held back says that nothing was written (`not_written`).
 */
async function call<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof InferxError) throw err;
    const message = (err as Error).message;
    if (/database space exceeded/i.test(message)) {
      throw new InferxError(
        "unavailable",
        `Cannot ${what}: etcd is out of space (its --quota-backend-bytes): compact and ` +
          `defragment it, then disarm its NOSPACE alarm (${message})`,
        // Refused by etcd itself: nothing of it was written (an asynchronous call may be sent
        // again).
        { cause: err, details: { not_written: true } },
      );
    }
    if (/request is too large|larger than max/i.test(message)) {
      // Past etcd's request size (or a reply past the client's): no retry would take it.
      throw new InferxError("too_large", `Cannot ${what}: etcd refused it: ${message}`, {
        cause: err,
      });
    }
    if (isBrokenCircuitError(err)) {
      // The client's breaker held the call back, every try of it: the client throws this only
      // when no try went out (an earlier try's own failure is thrown instead), so nothing of it
      // was written (an asynchronous call may be sent again).
      throw new InferxError(
        "unavailable",
        `Cannot ${what}: etcd failed the calls before it, so none is sent to it for a few ` +
          `seconds; nothing was written`,
        { cause: err, retryable: true, details: { not_written: true } },
      );
    }
    throw new InferxError(
      "unavailable",
      `Cannot ${what}: etcd did not answer (${connectionText((err as Error).message)})`,
      { cause: err, retryable: true },
    );
  }
}

/** Deletes {@linkcode EtcdStore.deleteKeys} keeps in flight. */
const DELETES_IN_FLIGHT = 32;

/**
 * The largest object etcd takes by default (its `--max-request-bytes`): what a page of a list
 * is sized for at worst.
 */
const ETCD_OBJECT_BYTES = 1.5 * 1024 * 1024;

/**
 * Keys the first page of a list reads. Each later page reads about LIST_PAGE_BYTES (an eighth of
 * what one answer may hold, when less) as far as the objects read so far tell, and never more
 * keys than one answer holds of objects of etcd's default largest (170 in 256 MiB): objects after
 * small ones may be large, and a page is read whole by etcd before it answers. A page past what
 * the client takes in one answer (objects larger than etcd's default lets in, with a larger
 * `--max-request-bytes`) is read again in halves.
 */
const LIST_PAGE = 64;
const LIST_PAGE_BYTES = 32 * 1024 * 1024;

/** A later page of a list found its revision compacted (its `cause`). */
class PageCompacted extends Error {
  constructor(override readonly cause: unknown) {
    super("compacted while listed");
  }
}

const transient = (err: Error) =>
  isRecoverableError(err) && !(err instanceof GRPCResourceExhastedError);

/** Options of {@linkcode EtcdStore.startCompaction}. */
export interface CompactionOptions {
  /** Revisions kept for watches that start in the past. @default 10000 */
  keepRevisions?: number;
  /** How often it compacts (ms). @default 300000 */
  everyMs?: number;
}

/** Connects to etcd at `hosts` (comma-separated `http://host:port`, env `ETCD_ADDRS`). */
export async function openEtcdStore(
  hosts: string,
  options: EtcdStoreOptions = {},
): Promise<EtcdStore> {
  const store = new EtcdStore(hosts, options);
  await store.revision().catch((err) => {
    store.close();
    throw new InferxError("unavailable", `Cannot reach etcd at ${hosts}: ${err.message}`, {
      cause: err,
      retryable: true,
    });
  });
  return store;
}

/** The etcd backend; exposes its client for leader election. */
export class EtcdStore implements MetaStore {
  readonly client: Etcd3;
  #maxAnswer: number;
  #listTimeout: number;

  constructor(hosts: string, options: EtcdStoreOptions = {}) {
    this.#maxAnswer = options.maxAnswerBytes ?? GRPC_MAX_MESSAGE_BYTES;
    this.#listTimeout = Math.max(options.listTimeoutMs ?? 60_000, options.timeoutMs ?? 5000);
    this.client = new Etcd3({
      hosts: hosts.split(",").map((h) => h.trim()).filter(Boolean),
      defaultCallOptions: (ctx) =>
        ctx.isStream ? {} : { deadline: Date.now() + (options.timeoutMs ?? 5000) },
      // A watch tries again 0.1 s after its stream ends, then up to every 2 s (the
      // library's default grows to 30 s, so a watch could lag that long after etcd returned).
      grpcOptions: {
        ...grpcChannelOptions({ pingIdle: false }),
        "grpc.max_receive_message_length": this.#maxAnswer,
      },
      faultHandling: {
        watchBackoff: cappedBackoff(100, 2000),
        // The library's defaults, less the refusals no retry changes.
        host: () =>
          circuitBreaker(handleWhen(transient), {
            halfOpenAfter: 5000,
            breaker: new ConsecutiveBreaker(3),
          }),
        global: retry(handleWhen(transient), { maxAttempts: 3 }),
      },
    });
  }

  #compaction?: ReturnType<typeof setInterval>;

  /**
   * Compacts etcd's history now and then, keeping the newest
   * `keepRevisions` (as the embedded store keeps its history): without it
   * etcd grows until its space quota, and then refuses every write. A watch
   * from before the kept revisions is told to list again.
   */
  startCompaction(options: CompactionOptions = {}): void {
    const keep = options.keepRevisions ?? 10_000;
    let done = 0;
    const compact = async () => {
      try {
        const target = (await this.revision()) - keep;
        if (target <= done) return;
        await this.client.kv.compact({ revision: String(target) });
        done = target;
      } catch (err) {
        // Already compacted that far (another state service did): nothing to do.
        if (/compacted/i.test((err as Error).message)) return;
        logger("store").warn("Cannot compact etcd: {error}", { error: String(err) });
      }
    };
    this.#compaction = setInterval(compact, options.everyMs ?? 300_000);
    Deno.unrefTimer(this.#compaction);
    compact();
  }

  async revision(): Promise<number> {
    const res = await call(
      "read the revision",
      () => this.client.getAll().prefix("/registry/").limit(1).exec(),
    );
    return Number(res.header.revision);
  }

  async get(key: string): Promise<KeyValue | undefined> {
    const res = await call(`read ${keyText(key)}`, () => this.client.get(key).exec());
    return res.kvs.length ? toKv(res.kvs[0]) : undefined;
  }

  async list(prefix: string): Promise<ListResult> {
    // In pages, all read at the first one's revision: a range of objects up to etcd's request
    // size each, read whole, could pass what the client takes in one answer (256 MiB).
    for (let attempt = 1;; attempt++) {
      try {
        return await this.#listPaged(prefix);
      } catch (err) {
        // A compaction (`startCompaction`, another state service's) passed the first page's
        // revision while the later pages were read: the list again, at a new one.
        if (!(err instanceof PageCompacted)) throw err;
        if (attempt >= 3) {
          throw new InferxError(
            "unavailable",
            `Cannot list ${keyText(prefix)}: etcd compacted the revision of the list while its ` +
              `pages were read, ${attempt} times in a row (compactions more often than a list ` +
              `takes: etcd's --auto-compaction-retention too short?)`,
            { cause: err.cause, retryable: true },
          );
        }
        // A moment for the compactions to pass before the next try.
        await new Promise((r) => setTimeout(r, 100 * attempt));
      }
    }
  }

  async #listPaged(prefix: string): Promise<ListResult> {
    const end = Range.prefix(prefix).end;
    const items: KeyValue[] = [];
    const what = `list ${keyText(prefix)}`;
    let revision: number | undefined;
    /** The most keys a page may read: lowered by a page found too large. */
    let most = Math.max(1, Math.floor(this.#maxAnswer / ETCD_OBJECT_BYTES));
    let page = Math.min(LIST_PAGE, most);
    const pageBytes = Math.min(LIST_PAGE_BYTES, this.#maxAnswer / 8);
    let read = 0;
    let bytes = 0;
    for (let from: Buffer = Buffer.from(prefix);;) {
      let res;
      try {
        // Not sorted: a range comes in key order, and a sorted one makes etcd (3.4) read the
        // whole rest of the range for every page.
        const range = this.client.getAll().inRange({ start: from, end }).limit(page)
          .options({ deadline: Date.now() + this.#listTimeout });
        res = await call(
          what,
          () => (revision === undefined ? range : range.revision(revision!)).exec(),
        );
      } catch (err) {
        const message = String((err as Error).cause ?? "") + (err as Error).message;
        // Past what the client takes in one answer (etcd let larger objects in, with a larger
        // --max-request-bytes): the same page in halves.
        if (page > 1 && err instanceof InferxError && err.code === "too_large") {
          page = most = Math.max(1, page >> 1);
          continue;
        }
        if (revision !== undefined && /compacted/i.test(message)) throw new PageCompacted(err);
        throw err;
      }
      revision ??= Number(res.header.revision);
      for (const kv of res.kvs) {
        items.push(toKv(kv));
        bytes += kv.key.length + kv.value.length;
      }
      read += res.kvs.length;
      if (!res.more || !res.kvs.length) return { items, revision };
      // The next page sized by the objects read so far: about `pageBytes` of them.
      const fits = Math.floor(pageBytes * read / Math.max(1, bytes));
      page = Math.max(1, Math.min(most, fits));
      // The key right after the last one read.
      from = Buffer.concat([res.kvs[res.kvs.length - 1].key, Buffer.from([0])]);
    }
  }

  async keys(prefix: string): Promise<string[]> {
    return await call(
      `list ${keyText(prefix)}`,
      // Keys alone, in one range: a million of them under 100 MiB, within the lists' deadline.
      () =>
        this.client.getAll().prefix(prefix).options({ deadline: Date.now() + this.#listTimeout })
          .keys(),
    );
  }

  async create(key: string, value: string): Promise<number> {
    const res = await call(
      `create ${keyText(key)}`,
      () => this.client.if(key, "Create", "==", 0).then(this.client.put(key).value(value)).commit(),
    );
    if (!res.succeeded) throw new AlreadyExistsError(`Cannot create ${key}: it already exists`);
    return Number(res.header.revision);
  }

  async update(key: string, value: string, expectedRevision: number): Promise<number> {
    const res = await call(
      `update ${keyText(key)}`,
      () =>
        this.client.if(key, "Mod", "==", expectedRevision)
          .then(this.client.put(key).value(value))
          .else(this.client.get(key)).commit(),
    );
    if (res.succeeded) return Number(res.header.revision);
    throw casFailure("update", key, expectedRevision, res);
  }

  async delete(key: string, expectedRevision?: number): Promise<number> {
    const guard = expectedRevision === undefined
      ? this.client.if(key, "Create", ">", 0)
      : this.client.if(key, "Mod", "==", expectedRevision);
    const res = await call(
      `delete ${keyText(key)}`,
      () => guard.then(this.client.delete().key(key)).else(this.client.get(key)).commit(),
    );
    if (res.succeeded) return Number(res.header.revision);
    throw casFailure("delete", key, expectedRevision, res);
  }

  async deleteKeys(keys: readonly string[]): Promise<number> {
    // One request each, as `delete` (a transaction of many would share one revision), several
    // in flight: etcd commits concurrent requests together (one at a time, a namespace of
    // 20,000 calls took minutes; bench/namespace_delete.ts --etcd).
    await forEachLimit(keys, DELETES_IN_FLIGHT, (key) =>
      this.delete(key).catch((err) => {
        if (!(err instanceof NotFoundError)) throw err;
      }));
    return await this.revision();
  }

  watch(prefix: string, options: WatchOptions): Watch {
    let cancelled = false;
    // One past the last revision delivered: where a (re)created watch starts.
    let next = options.afterRevision === undefined ? undefined : options.afterRevision + 1;
    const builder = this.client.watch().prefix(prefix);
    if (next !== undefined) builder.startRevision(String(next));
    // Not create(): its promise settles a turn after "connected", and events arriving
    // in that turn would find no listener.
    const w = builder.watcher();
    /** Ends the watch with `err`; `byEtcd`: etcd ended it (the library forgot it already). */
    const fail = (err: Error, byEtcd = false) => {
      if (cancelled) return;
      cancelled = true;
      if (!byEtcd) w.cancel().catch(() => {});
      options.onError?.(err);
    };
    // Emitted just before each create request is written, the first and every resume.
    w.on("connecting", () => {
      if (next !== undefined) w.request.start_revision = String(next);
    });
    w.on("connected", (res) => {
      // A watch from "now": it starts after the revision etcd created it at.
      if (next === undefined) next = Number(res.header?.revision ?? 0) + 1;
    });
    w.on("data", (res) => {
      if (cancelled) return;
      if (!res.events?.length) {
        // A progress notification: every event of this watch up to its revision came.
        const at = Number(res.header?.revision ?? 0);
        if (at > 0 && (next === undefined || at + 1 > next)) next = at + 1;
        return;
      }
      // All events of one revision come in one response, so a response's events
      // below `next` were delivered before (none should be; this keeps it so).
      let last = 0;
      for (const ev of res.events ?? []) {
        const kv = ev.kv!;
        const revision = Number(kv.mod_revision);
        if (next !== undefined && revision < next) continue;
        last = revision;
        try {
          if (ev.type === "Delete") {
            options.onEvent({ type: "delete", key: kv.key!.toString(), revision });
          } else options.onEvent({ type: "put", kv: toKv(kv as IKeyValue) });
        } catch (err) {
          // A watcher that cannot take an event ends (as the embedded store's do); its owner
          // lists again. Thrown on, it would surface from the client's emitter and end the process.
          return fail(err instanceof Error ? err : new Error(String(err)));
        }
        if (cancelled) return;
      }
      if (last > 0) next = last + 1;
    });
    // etcd cancels a watch whose start revision was compacted: list again.
    // (The library's error does not carry the revision etcd compacted to.)
    w.on("error", (err: Error) =>
      fail(
        /canceled|compact/i.test(err.message)
          ? new CompactedError(next === undefined ? 0 : next - 1, 0)
          : err,
        true,
      ));
    return {
      cancel: () => {
        if (cancelled) return;
        cancelled = true;
        w.cancel().catch(() => {});
      },
    };
  }

  close(): Promise<void> {
    clearInterval(this.#compaction);
    this.client.close();
    return Promise.resolve();
  }
}
