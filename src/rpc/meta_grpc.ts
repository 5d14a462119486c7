/**
 * `IxMetaService` over gRPC: {@linkcode serveMeta} exposes any
 * {@linkcode MetaClient} (the state service), {@linkcode GrpcMetaClient} is
 * the remote implementation of the same interface.
 *
 * @module
 */
import { isObjectType, type ObjectType } from "../model/keys.ts";
import { InferxError, ValidationError } from "../common/errors.ts";
import {
  call,
  clientOptions,
  endWithStatus,
  fromGrpcError,
  grpc,
  loadService,
  type PeerClientOptions,
  serve,
  shutdown,
  toGrpcError,
  unary,
} from "./grpc.ts";
import type {
  MetaClient,
  MetaRecord,
  MetaWatchOptions,
  ObjectInput,
  ObjectRef,
  WriteOptions,
  WriteResult,
} from "./types.ts";

const Service = loadService("ixmeta.proto", "ixmeta", "IxMetaService");

/** About how many bytes of records a piece of `ListChunks` carries. */
const LIST_CHUNK_BYTES = 4 * 1024 * 1024;

/** How long a client lists with List alone once a state service did not know ListChunks (ms). */
export const LIST_ONLY_MS = 60_000;

interface WireRef {
  type: string;
  tenant: string;
  namespace: string;
  name: string;
}
interface WireRecord {
  ref: WireRef;
  revision: number;
  value: string;
  unchanged?: boolean;
  dry_run?: boolean;
}

/**
 * Until `stream` takes more, or its call ends: a cancelled call (its client gone, its deadline
 * past) emits no "drain", and the list it waits on is dropped rather than held.
 */
function drained(stream: grpc.ServerWritableStream<unknown, unknown>): Promise<void> {
  if (stream.cancelled) return Promise.reject(new Error("the list's call was cancelled"));
  return new Promise((resolve, reject) => {
    const done = (err?: Error) => {
      stream.off("drain", onDrain);
      stream.off("cancelled", onEnd);
      stream.off("close", onEnd);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = () => done();
    const onEnd = () => done(new Error("the list's call ended before it was read"));
    stream.once("drain", onDrain);
    stream.once("cancelled", onEnd);
    stream.once("close", onEnd);
  });
}

function toRef(r: WireRef | null | undefined): ObjectRef {
  if (!r || !isObjectType(r.type)) {
    throw new ValidationError(
      `Invalid object reference: type "${r?.type ?? ""}" is unknown`,
      "type",
    );
  }
  return { type: r.type, tenant: r.tenant, namespace: r.namespace, name: r.name };
}

function wireRef(r: ObjectRef): WireRef {
  return { type: r.type, tenant: r.tenant, namespace: r.namespace, name: r.name };
}

function wireRecord(r: MetaRecord): WireRecord {
  return { ref: wireRef(r), revision: r.revision, value: r.value };
}

function fromRecord(r: WireRecord): MetaRecord {
  return { ...toRef(r.ref), revision: r.revision, value: r.value };
}

/** The answer of a Create or Update, with what it did. */
function wireWrite(r: WriteResult): WireRecord {
  return { ...wireRecord(r), unchanged: r.unchanged ?? false, dry_run: r.dryRun ?? false };
}

function fromWrite(r: WireRecord): WriteResult {
  const out: WriteResult = fromRecord(r);
  if (r.unchanged) out.unchanged = true;
  if (r.dry_run) out.dryRun = true;
  return out;
}

function objectType(t: string): ObjectType {
  if (!isObjectType(t)) throw new ValidationError(`Invalid type "${t}"`, "type");
  return t;
}

/** A running gRPC server. */
export interface GrpcServerHandle {
  port: number;
  stop(): Promise<void>;
}

/** Serves `meta` as `IxMetaService` on `address` (`host:port`, port 0 for any). */
/** Options of {@linkcode serveMeta}. */
export interface ServeMetaOptions {
  /** `INFERX_CLUSTER_TOKEN`: calls without it are refused; unset: none is asked for. */
  clusterToken?: string;
  /**
   * The most bytes of events one watch may hold that its watcher has not
   * taken (bytes of the records' values): past it the watch ends with
   * `RESOURCE_EXHAUSTED`, and the watcher lists again. A watcher that stops
   * reading (its flow-control window full) otherwise held every later event
   * in the state service's memory. @default 64 MiB
   */
  watchUnsentMaxBytes?: number;
}

export async function serveMeta(
  meta: MetaClient,
  address: string,
  options: ServeMetaOptions = {},
): Promise<GrpcServerHandle> {
  const unsentMax = options.watchUnsentMaxBytes ?? 64 * 1024 * 1024;
  const { server, port } = await serve(Service, {
    Version: unary(async () => ({ version: await meta.version() })),
    Get: unary(async (req: { ref: WireRef }) => {
      const rec = await meta.get(toRef(req.ref));
      return rec ? { found: true, record: wireRecord(rec) } : { found: false };
    }),
    List: unary(async (req: { type: string; tenant: string; namespace: string }) => {
      const { items, revision } = await meta.list(
        objectType(req.type),
        req.tenant || undefined,
        req.namespace || undefined, // without a tenant: refused, not ignored
      );
      return { items: items.map(wireRecord), revision };
    }),
    ListChunks: async (
      stream: grpc.ServerWritableStream<
        { type: string; tenant: string; namespace: string },
        unknown
      >,
    ) => {
      const req = stream.request;
      try {
        const { items, revision } = await meta.list(
          objectType(req.type),
          req.tenant || undefined,
          req.namespace || undefined,
        );
        let chunk: WireRecord[] = [];
        let bytes = 0;
        for (const rec of items) {
          chunk.push(wireRecord(rec));
          bytes += 128 + rec.value.length;
          if (bytes < LIST_CHUNK_BYTES) continue;
          // Each piece handed on before the next is made: a slow reader holds one piece more.
          if (!stream.write({ items: chunk, revision })) await drained(stream);
          chunk = [];
          bytes = 0;
        }
        if (chunk.length || !items.length) stream.write({ items: chunk, revision });
        stream.end();
      } catch (err) {
        endWithStatus(stream, toGrpcError(err));
      }
    },
    Create: unary(async (req: { ref: WireRef; object_json: string; dry_run: boolean }) =>
      wireWrite(
        await meta.create({ ...toRef(req.ref), object: parseObject(req.object_json) }, {
          dryRun: req.dry_run,
        }),
      )
    ),
    Update: unary(async (
      req: {
        ref: WireRef;
        object_json: string;
        has_revision: boolean;
        revision: number;
        dry_run: boolean;
      },
    ) =>
      wireWrite(
        await meta.update({
          ...toRef(req.ref),
          object: parseObject(req.object_json),
          revision: req.has_revision ? req.revision : undefined,
        }, { dryRun: req.dry_run }),
      )
    ),
    Delete: unary(async (req: { ref: WireRef; has_revision: boolean; revision: number }) => ({
      revision: await meta.delete(toRef(req.ref), req.has_revision ? req.revision : undefined),
    })),
    Watch: (
      stream: grpc.ServerWritableStream<
        {
          type: string;
          tenant: string;
          namespace: string;
          has_after_revision: boolean;
          after_revision: number;
        },
        unknown
      >,
    ) => {
      const req = stream.request;
      let w: { cancel(): void } | undefined;
      /** Bytes written that the stream has not sent on yet (its callbacks not called). */
      let unsent = 0;
      let cut = false;
      const send = (msg: unknown, bytes: number) => {
        if (cut) return;
        unsent += bytes;
        if (unsent > unsentMax) {
          cut = true;
          w?.cancel();
          const err = toGrpcError(
            new InferxError(
              "too_large",
              `Watch on ${req.type} ended: its watcher left ${unsent} bytes of events unread ` +
                `(the most is ${unsentMax}); list and watch again`,
            ),
          );
          // The status goes after what was handed to HTTP/2; the events queued behind it are
          // dropped, so the watch holds no more than the bound.
          endWithStatus(stream, err);
          return;
        }
        stream.write(msg, () => unsent -= bytes);
      };
      try {
        w = meta.watch(objectType(req.type), {
          tenant: req.tenant || undefined,
          namespace: req.namespace || undefined,
          afterRevision: req.has_after_revision ? req.after_revision : undefined,
          onEvent(ev) {
            if (ev.type === "put") {
              send({ kind: "put", record: wireRecord(ev.record) }, 128 + ev.record.value.length);
            } else send({ kind: "delete", ref: wireRef(ev.ref), revision: ev.revision }, 128);
          },
          onError(err) {
            // A compacted revision among them: the client lists again when it hears so.
            if (!cut) endWithStatus(stream, toGrpcError(err));
            cut = true;
          },
        });
      } catch (err) {
        endWithStatus(stream, toGrpcError(err));
        return;
      }
      stream.on("cancelled", () => w?.cancel());
      stream.on("close", () => w?.cancel());
    },
  }, { address, clusterToken: options.clusterToken });
  return { port, stop: () => shutdown(server) };
}

function parseObject(json: string): unknown {
  if (!json) return undefined;
  try {
    return JSON.parse(json);
  } catch (err) {
    throw new ValidationError(`Invalid object: not JSON (${(err as Error).message})`);
  }
}

/** Options for {@linkcode GrpcMetaClient}. */
export interface GrpcMetaClientOptions extends PeerClientOptions {
  /** Deadline of unary calls (ms). @default 5000 */
  timeoutMs?: number;
  /**
   * Deadline of a list, all its pieces (ms): a list of many large objects
   * takes longer than one object's call. @default 60000, at least `timeoutMs`
   */
  listTimeoutMs?: number;
  /** The clock (ms); for tests. @default Date.now */
  now?: () => number;
}

/** `MetaClient` that calls a state service over gRPC. */
export class GrpcMetaClient implements MetaClient {
  #client: grpc.Client;
  #timeout: number;
  #listTimeout: number;
  #what: string;
  /**
   * Until when lists use List (ms): the state service answered ListChunks
   * UNIMPLEMENTED, an earlier release's; asked again after a minute, since a
   * rolling update may replace it.
   */
  #listOnlyUntil = 0;
  #now: () => number;

  constructor(address: string, options: GrpcMetaClientOptions = {}) {
    this.#client = new Service(
      address,
      grpc.credentials.createInsecure(),
      clientOptions(`the state service at ${address}`, options),
    );
    this.#timeout = options.timeoutMs ?? 5000;
    this.#listTimeout = Math.max(options.listTimeoutMs ?? 60_000, this.#timeout);
    this.#now = options.now ?? Date.now;
    this.#what = `the state service at ${address}`;
  }

  #call<Res>(method: string, req: unknown): Promise<Res> {
    return call<unknown, Res>(this.#client, method, req, this.#timeout, this.#what);
  }

  async version(): Promise<string> {
    return (await this.#call<{ version: string }>("Version", {})).version;
  }

  async get(ref: ObjectRef): Promise<MetaRecord | undefined> {
    const res = await this.#call<{ found: boolean; record: WireRecord }>("Get", {
      ref: wireRef(ref),
    });
    return res.found ? fromRecord(res.record) : undefined;
  }

  async list(type: ObjectType, tenant?: string, namespace?: string) {
    const req = { type, tenant: tenant ?? "", namespace: namespace ?? "" };
    if (this.#now() >= this.#listOnlyUntil) {
      try {
        return await this.#listChunks(req);
      } catch (err) {
        if ((err as { grpcCode?: number }).grpcCode !== grpc.status.UNIMPLEMENTED) throw err;
        // A state service of a release before ListChunks (a rolling update): its one message.
        this.#listOnlyUntil = this.#now() + LIST_ONLY_MS;
      }
    }
    // One message, within the lists' deadline as a list in pieces is.
    const res = await call<unknown, { items: WireRecord[]; revision: number }>(
      this.#client,
      "List",
      req,
      this.#listTimeout,
      this.#what,
    );
    return { items: res.items.map(fromRecord), revision: res.revision };
  }

  /** A list in pieces, each a message of its own; the whole of it within the lists' deadline. */
  #listChunks(req: { type: string; tenant: string; namespace: string }) {
    return new Promise<{ items: MetaRecord[]; revision: number }>((resolve, reject) => {
      const items: MetaRecord[] = [];
      let revision = 0;
      const stream = (this.#client as unknown as {
        ListChunks(
          req: unknown,
          options: grpc.CallOptions,
        ): grpc.ClientReadableStream<{ items: WireRecord[]; revision: number }>;
      }).ListChunks(req, { deadline: Date.now() + this.#listTimeout });
      stream.on("data", (chunk) => {
        revision = Number(chunk.revision);
        for (const rec of chunk.items) items.push(fromRecord(rec));
      });
      stream.on("error", (err: grpc.ServiceError) => {
        const e = fromGrpcError(err, this.#what);
        reject(Object.assign(e, { grpcCode: err.code }));
      });
      stream.on("end", () => resolve({ items, revision }));
    });
  }

  async create(input: ObjectInput, options: WriteOptions = {}): Promise<WriteResult> {
    return fromWrite(
      await this.#call<WireRecord>("Create", {
        ref: wireRef(input),
        object_json: JSON.stringify(input.object ?? {}),
        dry_run: options.dryRun ?? false,
      }),
    );
  }

  async update(input: ObjectInput, options: WriteOptions = {}): Promise<WriteResult> {
    return fromWrite(
      await this.#call<WireRecord>("Update", {
        ref: wireRef(input),
        object_json: JSON.stringify(input.object ?? {}),
        has_revision: input.revision !== undefined,
        revision: input.revision ?? 0,
        dry_run: options.dryRun ?? false,
      }),
    );
  }

  async delete(ref: ObjectRef, revision?: number): Promise<number> {
    const res = await this.#call<{ revision: number }>("Delete", {
      ref: wireRef(ref),
      has_revision: revision !== undefined,
      revision: revision ?? 0,
    });
    return res.revision;
  }

  watch(type: ObjectType, options: MetaWatchOptions): { cancel(): void } {
    let cancelled = false;
    const stream = (this.#client as unknown as {
      Watch(req: unknown): grpc.ClientReadableStream<{
        kind: string;
        record: WireRecord;
        ref: WireRef;
        revision: number;
      }>;
    }).Watch({
      type,
      tenant: options.tenant ?? "",
      namespace: options.namespace ?? "",
      has_after_revision: options.afterRevision !== undefined,
      after_revision: options.afterRevision ?? 0,
    });
    stream.on("data", (ev) => {
      if (cancelled) return;
      if (ev.kind === "put") options.onEvent({ type: "put", record: fromRecord(ev.record) });
      else options.onEvent({ type: "delete", ref: toRef(ev.ref), revision: ev.revision });
    });
    const end = (err: Error) => {
      if (cancelled) return;
      cancelled = true;
      options.onError?.(err);
    };
    stream.on("error", (err) => end(fromGrpcError(err, this.#what)));
    stream.on(
      "end",
      () =>
        end(fromGrpcError({ code: grpc.status.UNAVAILABLE, details: "watch ended" }, this.#what)),
    );
    return {
      cancel: () => {
        cancelled = true;
        stream.cancel();
      },
    };
  }

  /** Closes the channel. */
  close(): void {
    this.#client.close();
  }
}
