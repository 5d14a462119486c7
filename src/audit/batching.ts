/**
 * The buffer between callers and an audit backend: rows are appended in
 * memory and written in batches on a timer, so a request never waits for the
 * database. When the backend fails, rows stay (up to a bound) and the writer
 * retries with backoff; rows past the bound are dropped, counted and logged.
 * A batch keeps its id and its rows until it is written, so a backend can
 * tell a retry of a batch it already committed (its answer lost with the
 * connection) and write it only once.
 *
 * @module
 */
import { connectionText, InferxError } from "../common/errors.ts";
import { newId } from "../common/ids.ts";
import { logger } from "../common/log.ts";
import {
  type AuditKind,
  type AuditLog,
  type AuditQuery,
  type AuditStats,
  type PodRow,
  type RequestRow,
  UNAUTHENTICATED,
} from "./types.ts";
import { type PackedRequests, RequestPacker, SLOTS } from "./row_codec.ts";
import { summarizeUsage, type UsageQuery, type UsageSummary } from "./usage.ts";

const log = logger("audit");

/** Rows written together; a retry of a batch has the same id and rows. */
export interface AuditBatch {
  id: string;
  /** Request rows as objects; empty when `packed` holds them. */
  requests: RequestRow[];
  /** Every request row, packed as it was made, for a backend that takes them so. */
  packed?: PackedRequests;
  pods: PodRow[];
}

/** Storage behind a {@linkcode BatchingAuditLog}. */
export interface AuditBackend {
  readonly name: AuditStats["backend"];
  /** Takes request rows packed (`AuditBatch.packed`): the buffer then holds them packed too. */
  readonly takesPacked?: boolean;
  /**
   * Writes the batch in one transaction; a batch id already written is not
   * written again. Returns how many of its rows the store refused for good
   * (a value it cannot hold) and were left out, when any were.
   */
  write(batch: AuditBatch): Promise<number | void>;
  query(kind: AuditKind, q: AuditQuery): Promise<(RequestRow | PodRow)[]>;
  /** Aggregates token usage itself; without it the log reads rows and aggregates them. */
  summarize?(q: UsageQuery): Promise<UsageSummary>;
  close(): Promise<void>;
  /** The young generation's pages of its own thread (bytes), when it runs in a worker thread. */
  readonly youngGenerationBytes?: number;
}

/** Most request rows read to aggregate usage for a backend that cannot aggregate. */
export const USAGE_READ_LIMIT = 100_000;

/** Settings of {@linkcode BatchingAuditLog}. */
export interface BatchingOptions {
  /** Rows held while the backend is down, beyond which new rows are dropped. @default 100000 */
  maxBuffered?: number;
  /** How often buffered rows are written (ms). @default 200 */
  flushMs?: number;
  /** Rows per write. @default 1000 */
  batchSize?: number;
  /** Longest wait between retries while the backend fails (ms). @default 5000 */
  maxBackoffMs?: number;
  /** How long {@linkcode BatchingAuditLog.close} waits for the last rows (ms). @default 10000 */
  closeMs?: number;
  /**
   * Rows of calls refused before they reached a function ({@linkcode refusedRow})
   * written a second at most, in bursts of ten times that; the rest are counted in
   * `refusedDropped`. Anyone can send such calls, an anonymous caller as
   * fast as the gateway answers: unbounded, they would push every tenant's
   * rows out of the retention (`AUDIT_RETAIN_MB`). @default 100
   */
  refusedPerS?: number;
}

/**
 * Whether `row` is of a call anyone can make the gateway refuse as fast as
 * it answers: for its credentials (401, 403, or any answer given a caller
 * whose credential was not accepted: a token naming a key the issuer has
 * not published is 503, to be tried again), or naming no function or model
 * the caller may call (a 404 no worker gave: a worker's own 404 was a call).
 */
export function refusedRow(row: RequestRow): boolean {
  return row.status === 401 || row.status === 403 || row.principal === UNAUTHENTICATED ||
    (row.status === 404 && row.pod === undefined) ||
    // A quota's refusal (a call rate's among them): a tenant past its rate refused at once,
    // thousands a second, would fill the audit with them.
    (row.status === 429 && row.pod === undefined);
}

/** A write out this long (ms) makes the log report itself unhealthy. */
const STUCK_MS = 10_000;

/** An {@linkcode AuditLog} that buffers rows and writes them in batches. */
export class BatchingAuditLog implements AuditLog {
  #backend: AuditBackend;
  #requests: RequestRow[] = [];
  /** Request rows packed as they come, for a backend that takes them so. */
  #packer?: RequestPacker;
  #pods: PodRow[] = [];
  /** The batch being written, kept as it is until it is. */
  #batchNow?: AuditBatch;
  #max: number;
  #batch: number;
  #maxBackoff: number;
  #closeMs: number;
  /** When the write under way began (`performance.now()`). */
  #writingSince?: number;
  #timer: ReturnType<typeof setInterval>;
  #writing?: Promise<void>;
  #failures = 0;
  #retryAt = 0;
  #written = 0;
  #dropped = 0;
  #droppedLogged = 0;
  #refusedPerS: number;
  /** Refused calls' rows that may be written now (a token bucket). */
  #refusedTokens: number;
  #refusedAt = performance.now();
  #refusedDropped = 0;
  #refusedLogged = 0;
  /** Rows dropped before the present spell of a full buffer began; undefined: none now. */
  #spellStart?: number;
  #healthy = true;
  #closed = false;

  constructor(backend: AuditBackend, opts: BatchingOptions = {}) {
    this.#backend = backend;
    if (backend.takesPacked) this.#packer = new RequestPacker();
    this.#max = opts.maxBuffered ?? 100_000;
    this.#batch = opts.batchSize ?? 1000;
    this.#maxBackoff = opts.maxBackoffMs ?? 5000;
    this.#closeMs = opts.closeMs ?? 10_000;
    this.#refusedPerS = opts.refusedPerS ?? 100;
    this.#refusedTokens = this.#refusedPerS * 10;
    this.#timer = setInterval(() => {
      // A write in progress: what comes meanwhile waits for the next tick.
      if (!this.#writing && performance.now() >= this.#retryAt) this.#drain().catch(() => {});
    }, opts.flushMs ?? 200);
  }

  request(row: RequestRow): void {
    if (refusedRow(row) && !this.#refusedAdmitted()) return;
    if (!this.#admit()) return;
    if (this.#packer) this.#packer.push(row);
    else this.#requests.push(row);
  }

  pod(row: PodRow): void {
    if (this.#admit()) this.#pods.push(row);
  }

  /** Whether a refused call's row may be written now (`refusedPerS`). */
  #refusedAdmitted(): boolean {
    const now = performance.now();
    const burst = this.#refusedPerS * 10;
    this.#refusedTokens = Math.min(
      burst,
      this.#refusedTokens + (now - this.#refusedAt) * this.#refusedPerS / 1000,
    );
    this.#refusedAt = now;
    if (this.#refusedTokens >= 1) {
      this.#refusedTokens--;
      return true;
    }
    this.#refusedDropped++;
    if (this.#refusedDropped - this.#refusedLogged >= 10_000 || this.#refusedLogged === 0) {
      log.warn(
        "Calls refused before any function took them (401, 403, or a 404 the gateway gave: no such function) come faster than {rate} a second: {dropped} of their audit rows not written so far",
        { rate: this.#refusedPerS, dropped: this.#refusedDropped },
      );
      this.#refusedLogged = this.#refusedDropped;
    }
    return false;
  }

  #admit(): boolean {
    if (this.#closed) return false;
    if (this.#buffered() < this.#max) return true;
    this.#dropped++;
    // The first drop of each spell of a full buffer is told at once, then every 1,000th.
    this.#spellStart ??= this.#dropped - 1;
    if (this.#dropped - this.#droppedLogged >= 1000 || this.#spellStart === this.#dropped - 1) {
      log.error("Audit buffer full ({max} rows): {dropped} row(s) dropped so far", {
        max: this.#max,
        dropped: this.#dropped,
      });
      this.#droppedLogged = this.#dropped;
    }
    return false;
  }

  query(kind: "requests", q?: AuditQuery): Promise<RequestRow[]>;
  query(kind: "pods", q?: AuditQuery): Promise<PodRow[]>;
  async query(kind: AuditKind, q: AuditQuery = {}): Promise<(RequestRow | PodRow)[]> {
    try {
      return await this.#backend.query(kind, q);
    } catch (err) {
      throw new InferxError(
        "unavailable",
        `Cannot read the audit (${this.#backend.name}): ${connectionText((err as Error).message)}`,
        { cause: err, retryable: true },
      );
    }
  }

  async usage(q: UsageQuery): Promise<UsageSummary> {
    try {
      if (this.#backend.summarize) return await this.#backend.summarize(q);
      const rows = await this.#backend.query("requests", {
        tenant: q.tenant,
        since: q.since,
        limit: USAGE_READ_LIMIT,
      }) as RequestRow[];
      const summary = summarizeUsage(rows, q);
      // Newest first: past the limit, the figures start at the oldest row read, and say so.
      if (rows.length >= USAGE_READ_LIMIT) {
        return { ...summary, since: rows[rows.length - 1].time, truncated: true };
      }
      return summary;
    } catch (err) {
      throw new InferxError(
        "unavailable",
        `Cannot read the audit (${this.#backend.name}): ${connectionText((err as Error).message)}`,
        { cause: err, retryable: true },
      );
    }
  }

  stats(): AuditStats {
    const stats: AuditStats = {
      backend: this.#backend.name,
      buffered: this.#buffered(),
      written: this.#written,
      dropped: this.#dropped,
      refusedDropped: this.#refusedDropped,
      // A write that has not come back for a while (the table locked, the server hung) is as
      // bad as one that failed: rows pile up behind it.
      healthy: this.#healthy &&
        !(this.#writingSince !== undefined && performance.now() - this.#writingSince > STUCK_MS),
    };
    const young = this.#backend.youngGenerationBytes;
    return young === undefined ? stats : { ...stats, youngGenerationBytes: young };
  }

  #buffered(): number {
    const b = this.#batchNow;
    return this.#requests.length + (this.#packer?.length ?? 0) + this.#pods.length +
      (b ? rowsOf(b) : 0);
  }

  /** Writes every buffered row now. */
  flush(): Promise<void> {
    return this.#drain(true);
  }

  /**
   * Writes batches, one writer at a time: the rows buffered when it starts,
   * then more only while a whole batch is waiting (`all`: until the buffer
   * is empty). Rows that come while a batch is written wait for the next
   * tick: written at once, each write would carry the few rows that came
   * during the one before, and a transaction of a few rows costs nearly
   * what one of a thousand does (every index's last page written again,
   * a commit, a round trip to the worker).
   */
  #drain(all = false): Promise<void> {
    // After the write in progress, failed or not: a flush or close tries once itself.
    if (this.#writing) return this.#writing.catch(() => {}).then(() => this.#drain(all));
    if (!this.#buffered()) return Promise.resolve();
    this.#writing = (async () => {
      try {
        let owed = all ? Infinity : this.#buffered();
        while (this.#buffered() && (owed > 0 || this.#buffered() >= this.#batch)) {
          // A failed batch is retried as it was: same id, same rows.
          const b = this.#batchNow ??= {
            id: newId("audit", 8),
            requests: this.#requests.splice(0, this.#batch),
            packed: this.#packer?.length ? this.#packer.take(this.#batch) : undefined,
            pods: this.#pods.splice(0, this.#batch),
          };
          this.#writingSince = performance.now();
          const refused = (await this.#backend.write(b)) ?? 0;
          this.#batchNow = undefined;
          this.#written += rowsOf(b) - refused;
          if (refused) {
            this.#dropped += refused;
            log.warn("Audit rows {name} cannot hold, left out: {rows}", {
              name: this.#backend.name,
              rows: refused,
            });
          }
          owed -= rowsOf(b);
        }
        if (!this.#healthy) log.info("Audit backend {name} is back", { name: this.#backend.name });
        if (this.#spellStart !== undefined) {
          log.warn("Audit rows dropped while the buffer was full: {rows}", {
            rows: this.#dropped - this.#spellStart,
          });
          this.#spellStart = undefined;
        }
        this.#healthy = true;
        this.#failures = 0;
        this.#retryAt = 0;
      } catch (err) {
        if (this.#healthy) {
          log.warn("Cannot write audit rows to {name}, keeping them: {error}", {
            name: this.#backend.name,
            error: String((err as Error).message ?? err),
          });
        }
        this.#healthy = false;
        this.#failures++;
        this.#retryAt = performance.now() +
          Math.min(this.#maxBackoff, 100 * 2 ** Math.min(this.#failures, 10));
        throw err;
      } finally {
        this.#writing = undefined;
        this.#writingSince = undefined;
      }
    })();
    return this.#writing;
  }

  async close(): Promise<void> {
    clearInterval(this.#timer);
    this.#closed = true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    // A stop waits a while for the last rows, not for ever (a store that does not answer).
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`no answer within ${this.#closeMs} ms`)),
        this.#closeMs,
      );
    });
    await Promise.race([this.#drain(true), deadline]).catch((err) => {
      const left = this.#buffered();
      log.error("Closing the audit log with {left} row(s) unwritten: {error}", {
        left,
        error: String((err as Error).message ?? err),
      });
    }).finally(() => clearTimeout(timer));
    await this.#backend.close();
  }
}

/** Rows in a batch, packed or not. */
function rowsOf(b: AuditBatch): number {
  return b.requests.length + (b.packed ? b.packed.nums.length / SLOTS : 0) + b.pods.length;
}
