/**
 * The embedded audit off the main thread: a {@linkcode SqliteAuditBackend}
 * in a Web Worker, reached by messages. SQLite calls are synchronous; in the
 * worker, inserting a batch, a retention pass or a query never holds up the
 * event loop that serves requests. A worker that dies is started again on
 * the next call (the batching buffer retries the batch that was in it).
 *
 * @module
 */
import type { AuditBackend, AuditBatch } from "./batching.ts";
import { encodeRequests } from "./row_codec.ts";
import { openSqliteAudit, type OpenSqliteAuditOptions, type SqliteAuditOptions } from "./sqlite.ts";
import type { AuditKind, AuditQuery, PodRow, RequestRow } from "./types.ts";

/** Settings a worker can take (plain data: no clock function). */
export type WorkerAuditOptions = Omit<SqliteAuditOptions, "now">;

/** A call a {@linkcode WorkerAuditBackend} makes of its worker. */
export type WorkerCall =
  | { op: "write"; batch: AuditBatch }
  | { op: "query"; kind: AuditKind; q: AuditQuery }
  | { op: "close" };

/** A message to the worker: the first opens the database. */
export type WorkerRequest =
  & { id: number }
  & ({ op: "open"; path: string; options: WorkerAuditOptions } | WorkerCall);

/** The worker's answer to the request with the same id, and its thread's young generation. */
export type WorkerReply =
  & { young?: number }
  & ({ id: number; ok: true; result?: unknown } | { id: number; ok: false; error: string });

interface Pending {
  resolve(v: unknown): void;
  reject(e: Error): void;
}

/** An {@linkcode AuditBackend} whose SQLite database lives in a worker. */
export class WorkerAuditBackend implements AuditBackend {
  readonly name = "embedded";
  readonly takesPacked = true;
  #path: string;
  #options: WorkerAuditOptions;
  #worker?: Worker;
  #pending = new Map<number, Pending>();
  #seq = 0;
  #closed = false;
  /** The young generation's pages of the worker's thread, as of its last answer (bytes). */
  youngGenerationBytes = 0;

  /** Opens the database at `path` in a new worker (the file must be openable: see `openSqliteAudit`). */
  constructor(path: string, options: WorkerAuditOptions = {}) {
    this.#path = path;
    this.#options = options;
  }

  #start(): Worker {
    const w = new Worker(new URL("./_sqlite_worker_main.ts", import.meta.url).href, {
      type: "module",
    });
    w.onmessage = (e: MessageEvent<WorkerReply>) => {
      this.youngGenerationBytes = e.data.young ?? 0;
      const p = this.#pending.get(e.data.id);
      if (!p) return;
      this.#pending.delete(e.data.id);
      if (e.data.ok) p.resolve(e.data.result);
      else p.reject(new Error(e.data.error));
    };
    w.onerror = (e: ErrorEvent) => {
      e.preventDefault();
      this.#stop(new Error(`The audit worker stopped: ${e.message}`));
    };
    // The worker tries a failed open again with each request, which then fails with the reason.
    this.#send(w, { id: ++this.#seq, op: "open", path: this.#path, options: this.#options })
      .catch(() => {});
    return w;
  }

  /** Ends the worker and fails what waited on it; the next call starts another. */
  #stop(err: Error): void {
    this.#worker?.terminate();
    this.#worker = undefined;
    this.youngGenerationBytes = 0;
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
  }

  #send(w: Worker, req: WorkerRequest): Promise<unknown> {
    return new Promise((resolve, reject) => {
      this.#pending.set(req.id, { resolve, reject });
      w.postMessage(req);
    });
  }

  #call(req: WorkerCall): Promise<unknown> {
    if (this.#closed) return Promise.reject(new Error("The audit is closed"));
    const w = this.#worker ??= this.#start();
    return this.#send(w, { ...req, id: ++this.#seq });
  }

  write(batch: AuditBatch): Promise<void> {
    // Rows go packed: the structured clone copies one array of numbers, not an object per row.
    const packed = batch.packed ?? encodeRequests(batch.requests);
    return this.#call({ op: "write", batch: { ...batch, requests: [], packed } }) as Promise<void>;
  }

  query(kind: AuditKind, q: AuditQuery): Promise<(RequestRow | PodRow)[]> {
    return this.#call({ op: "query", kind, q }) as Promise<(RequestRow | PodRow)[]>;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    if (this.#worker) await this.#call({ op: "close" }).catch(() => {});
    this.#closed = true;
    this.#stop(new Error("The audit is closed"));
  }
}

/**
 * Opens the embedded audit at `path` for a role: first here, to create the
 * schema, import older files and fail at start when the file cannot be
 * opened; then in a worker that does the writes and queries.
 */
export function openWorkerAudit(
  path: string,
  options: WorkerAuditOptions & Pick<OpenSqliteAuditOptions, "legacyDir"> = {},
): WorkerAuditBackend {
  openSqliteAudit(path, options).close();
  return new WorkerAuditBackend(path, options);
}
