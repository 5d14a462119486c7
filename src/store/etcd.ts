/**
 * etcd `MetaStore` on `npm:etcd3`: compare-and-swap through transactions on
 * the mod revision, prefix watches that the client resumes after a
 * disconnect from the last revision it saw, and a `CompactedError` when
 * etcd cancels a watch (it does so when the start revision was compacted):
 * the caller lists again.
 *
 * @module
 */
import { Etcd3, type IKeyValue } from "etcd3";
import { AlreadyExistsError, ConflictError, InferxError, NotFoundError } from "../common/errors.ts";
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
 * Runs one etcd call; a failure of etcd itself (down, unreachable, the
 * client's circuit breaker open) becomes a retryable `unavailable` error,
 * so that callers answer 503 rather than an internal error.
 */
async function call<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof InferxError) throw err;
    throw new InferxError(
      "unavailable",
      `Cannot ${what}: etcd did not answer (${(err as Error).message})`,
      { cause: err, retryable: true },
    );
  }
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

  constructor(hosts: string, options: EtcdStoreOptions = {}) {
    this.client = new Etcd3({
      hosts: hosts.split(",").map((h) => h.trim()).filter(Boolean),
      defaultCallOptions: () => ({ deadline: Date.now() + (options.timeoutMs ?? 5000) }),
    });
  }

  async revision(): Promise<number> {
    const res = await call(
      "read the revision",
      () => this.client.getAll().prefix("/registry/").limit(1).exec(),
    );
    return Number(res.header.revision);
  }

  async get(key: string): Promise<KeyValue | undefined> {
    const res = await call(`read ${key}`, () => this.client.get(key).exec());
    return res.kvs.length ? toKv(res.kvs[0]) : undefined;
  }

  async list(prefix: string): Promise<ListResult> {
    const res = await call(
      `list ${prefix}`,
      () => this.client.getAll().prefix(prefix).sort("Key", "Ascend").exec(),
    );
    return { items: res.kvs.map(toKv), revision: Number(res.header.revision) };
  }

  async create(key: string, value: string): Promise<number> {
    const res = await call(
      `create ${key}`,
      () => this.client.if(key, "Create", "==", 0).then(this.client.put(key).value(value)).commit(),
    );
    if (!res.succeeded) throw new AlreadyExistsError(`Cannot create ${key}: it already exists`);
    return Number(res.header.revision);
  }

  async update(key: string, value: string, expectedRevision: number): Promise<number> {
    const res = await call(
      `update ${key}`,
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
      `delete ${key}`,
      () => guard.then(this.client.delete().key(key)).else(this.client.get(key)).commit(),
    );
    if (res.succeeded) return Number(res.header.revision);
    throw casFailure("delete", key, expectedRevision, res);
  }

  watch(prefix: string, options: WatchOptions): Watch {
    let cancelled = false;
    let watcher: Awaited<ReturnType<ReturnType<Etcd3["watch"]>["create"]>> | undefined;
    const builder = this.client.watch().prefix(prefix);
    if (options.afterRevision !== undefined) {
      builder.startRevision(String(options.afterRevision + 1));
    }
    const fail = (err: Error) => {
      if (cancelled) return;
      cancelled = true;
      watcher?.cancel().catch(() => {});
      options.onError?.(err);
    };
    builder.create().then(
      (w) => {
        watcher = w;
        if (cancelled) return void w.cancel().catch(() => {});
        w.on("put", (kv) => !cancelled && options.onEvent({ type: "put", kv: toKv(kv) }));
        w.on("delete", (kv) =>
          !cancelled &&
          options.onEvent({
            type: "delete",
            key: kv.key.toString(),
            revision: Number(kv.mod_revision),
          }));
        // etcd cancels a watch whose start revision was compacted: list again.
        w.on("error", (err: Error) =>
          fail(
            /canceled|compact/i.test(err.message)
              ? new CompactedError(options.afterRevision ?? 0, 0)
              : err,
          ));
      },
      (err: Error) => fail(err),
    );
    return {
      cancel: () => {
        cancelled = true;
        watcher?.cancel().catch(() => {});
      },
    };
  }

  close(): Promise<void> {
    this.client.close();
    return Promise.resolve();
  }
}
