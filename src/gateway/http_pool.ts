/**
 * A keep-alive HTTP/1.1 client for the gateway's upstream calls, on
 * `Deno.connect` with TCP_NODELAY: idle connections pooled per worker, the
 * request head and a known-length body in one write, streamed bodies sent
 * chunked, answers framed by llhttp (Content-Length, chunked, or until
 * close). Sized answers up to 1 MiB are read whole so the connection goes
 * back at once; larger or unsized ones are read as they come. A reused
 * connection that turns out closed before any answer is retried once on a
 * fresh one; a streamed request body, which cannot be sent twice, always
 * goes on a fresh one. When reading the caller's streamed body fails, the
 * body's own error is thrown (the caller's fault, not the worker's). Idle
 * connections are closed after an idle timeout, so a worker that went away
 * (scale to zero) leaves nothing open; an exchange in which nothing moved
 * either way for longer than its request's `answerTimeoutMs` while the
 * gateway waited on the worker is cut ({@linkcode AnswerTimeout}, as nginx's
 * `proxy_read_timeout`; time spent waiting on the caller does not count),
 * found by the same sweep rather than a timer a request. No `Response` objects: the warm
 * path writes what it reads.
 *
 * @module
 */
import { InferxError } from "../common/errors.ts";
import { splitEndpoint } from "../common/net.ts";
import { concatBytes, copyBytes, headText, latin1Into, restOf, valueEnd } from "./http1/bytes.ts";
import { HOP_BY_HOP, withoutConnectionNamed } from "./http1/fields.ts";
import { EV, HPE, Http1Parser } from "../common/llhttp.ts";

const MAX_HEAD = 64 * 1024;
/**
 * How often at most {@linkcode HttpPool.sweep} looks for quiet exchanges (ms;
 * the gateway sweeps every 100).
 */
const QUIET_CHECK_MS = 50;
const IDLE_PER_ENDPOINT = 64;
/** Sized answers up to this are read whole rather than streamed. */
export const BUFFER_LIMIT = 1024 * 1024;

/**
 * The worker cannot be reached: the connection was refused, or broke before
 * any of the request went out (`sent` false: the worker cannot have seen it,
 * and none of a streamed body was read), or — for a request that may be
 * sent twice (an idempotent method, an idempotency key) — closed with no
 * answer after it went out.
 */
export class ConnectError extends Error {
  /** Some of the request went out. */
  readonly sent: boolean;
  constructor(message: string, options?: { cause?: unknown; sent?: boolean }) {
    super(message, options);
    this.name = "ConnectError";
    this.sent = options?.sent ?? false;
  }
}

/**
 * The worker had the request (some of it went out) and then closed the
 * connection without answering, broke off its answer, or answered what is
 * not HTTP: the call is not sent to another worker (it may have run), and
 * the worker is not reported unreachable.
 */
export class AnswerBroken extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "AnswerBroken";
  }
}

/**
 * Nothing moved between the gateway and the worker (no byte read from it, none
 * written to it) while the gateway waited on it for longer than the request's
 * `answerTimeoutMs`: the
 * connection was closed. The worker had the request, so the call is not sent
 * to another worker.
 */
export class AnswerTimeout extends Error {
  constructor(limitMs: number) {
    super(`it sent nothing for ${limitMs / 1000} s`);
    this.name = "AnswerTimeout";
  }
}

/**
 * Reading the caller's streamed body failed (too large, malformed, the
 * caller gone): the caller's fault, not the worker's. {@linkcode HttpPool.send}
 * throws the body's own error (`cause`), never a {@linkcode ConnectError}.
 */
class RequestBodyError extends Error {
  constructor(cause: unknown) {
    super("reading the request body failed", { cause });
  }
}

/** A request to send with {@linkcode HttpPool.send}. */
export interface PoolRequest {
  method: string;
  /** Path and query, e.g. `/v1/completions?x=1`. */
  path: string;
  /** Lower-case names, without hop-by-hop fields, `host` or `content-length`. */
  headers: Iterable<readonly [string, string]>;
  body: Uint8Array | AsyncIterable<Uint8Array> | null;
  /**
   * The longest the exchange may stay quiet, nothing read from the worker and
   * nothing written to it, before it is cut with {@linkcode AnswerTimeout}
   * (checked by {@linkcode HttpPool.sweep}); absent: no limit.
   */
  answerTimeoutMs?: number;
}

/** An upstream answer: its head, and its body whole or as it comes. */
export interface UpstreamAnswer {
  status: number;
  statusText: string;
  /**
   * Lower-case names; framing fields (connection, keep-alive,
   * transfer-encoding, content-length), `set-cookie`, `x-content-type-options`
   * and `x-inferx-*` removed.
   */
  headers: [string, string][];
  /** The declared body length, when sized (for HEAD, the length a GET would have). */
  length: number | undefined;
  /** The whole body, when it was read at once (sized, up to 1 MiB, or none). */
  bytes?: Uint8Array;
  /**
   * The next piece of a streamed body; null at its end. Rejects with
   * {@linkcode AnswerTimeout} or {@linkcode AnswerBroken} when the worker
   * stops short.
   */
  read(): Promise<Uint8Array | null>;
  /** Gives up on the rest of the body (the connection is closed). */
  cancel(): void;
}

/** An answer's head as read. */
interface Head {
  status: number;
  statusText: string;
  headers: [string, string][];
  length?: number;
}

/**
 * Fields of a worker's answer never passed on: the framing; `set-cookie`
 * (every function answers on the gateway's one origin, the dashboard's too: a
 * cookie one function sets would reach the others); `x-content-type-options`
 * (the gateway sends `nosniff` itself, and a browser reads the first of two:
 * a worker's `sniff` before it would undo it); and the fields a browser
 * applies to the whole origin whatever answer carries them, a `fetch()`'s
 * included: `clear-site-data` (it signed the dashboard out and deleted the
 * host's cookies), `strict-transport-security`, `alt-svc`, `nel`,
 * `report-to`, `reporting-endpoints` and `service-worker-allowed`; and the
 * fields a proxy in front acts on (`x-sendfile`, `x-sendfile2`, `x-lighttpd-send-file`,
 * and nginx's `x-accel-*`, see {@linkcode passed}): nginx in front followed
 * a worker's `X-Accel-Redirect` and sent the caller's request, credentials
 * and all, to the route the worker named.
 */
const NOT_PASSED: ReadonlySet<string> = new Set([
  ...HOP_BY_HOP,
  "content-length",
  "set-cookie",
  "x-content-type-options",
  "clear-site-data",
  "strict-transport-security",
  "alt-svc",
  "nel",
  "report-to",
  "reporting-endpoints",
  "service-worker-allowed",
  "x-sendfile",
  "x-sendfile2",
  "x-lighttpd-send-file",
]);

/**
 * Whether a worker's answer field is passed to the caller: not one of
 * {@linkcode NOT_PASSED}, nor the gateway's own (`x-inferx-*`: callers and
 * `ctl` trust them), nor one nginx in front would act on (`x-accel-*`).
 */
function passed(name: string): boolean {
  return !NOT_PASSED.has(name) && !name.startsWith("x-inferx-") && !name.startsWith("x-accel-");
}

class Conn {
  readonly socket: Deno.TcpConn;
  readonly #parser: Http1Parser;
  #buf = new Uint8Array(16 * 1024);
  #start = 0;
  #end = 0;
  #out = new Uint8Array(4 * 1024);
  closed = false;
  /** Some of the answer to the request being exchanged has come. */
  heard = false;
  /** Some of the request being exchanged went out (the worker took the connection). */
  wroteSome = false;
  /** Then writing the rest failed: the worker closed the connection while it was sent. */
  writeFailed = false;
  /** When it went back to the pool (`performance.now()`). */
  idleSince = 0;
  /** The current exchange's quiet limit (ms); 0 while idle or without one. */
  quietLimitMs = 0;
  /** Since when the sweep has seen nothing move (`performance.now()`). */
  quietSince = 0;
  /** Something was read or written since the sweep last looked. */
  stirred = false;
  /**
   * A read or write on the worker's socket is under way: the exchange waits
   * on the worker. Only such time is quiet; while the gateway waits on the
   * caller (a slow reader of the answer, a slow sender of a streamed body)
   * the worker is not to blame.
   */
  waiting = false;
  /** The sweep cut the exchange: it was quiet past its limit. */
  timedOut = false;
  #paused = false;
  /**
   * The read begun when the connection went back to the pool: the next
   * exchange's first, and how a worker closing it meanwhile (its own idle
   * timeout, its end) is heard at once, so it is not used for a request.
   */
  #idleRead?: Promise<number | null>;
  // The answer being read.
  #noBody = false;
  #headersDone = false;
  #bodyDone = false;
  #statusStart = -1;
  #statusEnd = -1;
  #ranges: number[] = [];
  #lastWasValue = false;
  #body: Uint8Array[] = [];
  /** Bytes of the answer's head so far, and of its trailer fields (never taken as fields). */
  #headBytes = 0;
  #trailerBytes = 0;

  constructor(socket: Deno.TcpConn) {
    this.socket = socket;
    this.#parser = new Http1Parser("response");
  }

  #messageBegin(): void {
    this.#headBytes = this.#trailerBytes = 0;
    this.#headersDone = this.#bodyDone = false;
    this.#statusStart = this.#statusEnd = -1;
    this.#ranges.length = 0;
    this.#lastWasValue = false;
    this.#body = [];
  }

  /** Applies what the parser found: the head's spans, body pieces, the answer's end. */
  #apply(): void {
    const p = this.#parser;
    const ev = p.events;
    const r = this.#ranges;
    for (let i = 0, n = p.eventCount; i < n; i += 3) {
      const at = ev[i + 1];
      const end = at + ev[i + 2];
      switch (ev[i]) {
        case EV.MESSAGE_BEGIN:
          this.#messageBegin();
          break;
        case EV.STATUS:
          if (this.#statusStart < 0) this.#statusStart = at;
          this.#statusEnd = end;
          this.#headBytes += end - at;
          break;
        case EV.HEADER_FIELD:
          if (this.#headersDone) {
            this.#trailerBytes += end - at;
            break;
          }
          this.#headBytes += end - at;
          if (r.length && !this.#lastWasValue) r[r.length - 3] = end;
          else r.push(at, end, -1, -1);
          this.#lastWasValue = false;
          break;
        case EV.HEADER_VALUE:
          if (this.#headersDone) {
            this.#trailerBytes += end - at;
            break;
          }
          this.#headBytes += end - at;
          if (r[r.length - 2] < 0) r[r.length - 2] = at;
          r[r.length - 1] = end;
          this.#lastWasValue = true;
          break;
        case EV.HEADERS_COMPLETE:
          this.#headersDone = true;
          break;
        case EV.BODY:
          this.#body.push(copyBytes(this.#buf, at, end));
          break;
        case EV.MESSAGE_COMPLETE:
          this.#bodyDone = true;
          break;
      }
    }
  }

  /**
   * Sends a request and reads its answer's head (skipping 1xx answers);
   * undefined when the peer closed before sending anything. Bodies of
   * unknown length go chunked.
   */
  async exchange(endpoint: string, req: PoolRequest): Promise<Head | undefined> {
    // Taken before anything is sent: whatever it brings from here on is this exchange's.
    let idleRead = this.#idleRead;
    this.#idleRead = undefined;
    // Nothing of this exchange's answer yet (a pooled connection heard its last one).
    this.heard = this.wroteSome = this.writeFailed = false;
    this.#noBody = req.method === "HEAD";
    let head = `${req.method} ${req.path} HTTP/1.1\r\nhost: ${endpoint}\r\n`;
    for (const [k, v] of req.headers) head += `${k}: ${v}\r\n`;
    const body = req.body;
    /** A write that failed: the worker may have answered without reading it all (413) and closed. */
    let unsent: unknown;
    try {
      if (body && !(body instanceof Uint8Array)) {
        await this.#sendChunked(`${head}transfer-encoding: chunked\r\n\r\n`, body);
      } else {
        const n = body?.byteLength ?? 0;
        if (n || !NO_BODY_METHODS.has(req.method)) head += `content-length: ${n}\r\n`;
        head += "\r\n";
        const total = head.length + n;
        if (total > this.#out.length) this.#out = new Uint8Array(total);
        const out = this.#encode(head);
        if (n) out.set(body!, head.length);
        this.waiting = true;
        for (let o = 0; o < total;) {
          o += await this.socket.write(out.subarray(o, total));
          this.wroteSome = true;
        }
        this.waiting = false;
        this.stirred = true;
      }
    } catch (err) {
      if (err instanceof RequestBodyError || !this.wroteSome) throw err;
      unsent = err;
      this.writeFailed = true;
    }
    // The answer's head.
    let interims = 0;
    this.#start = this.#end = 0;
    this.#headersDone = this.#bodyDone = false;
    while (true) {
      this.#parse();
      if (this.#headersDone) {
        const status = this.#parser.statusCode;
        // The gateway asks no worker to switch protocols (`upgrade` is not forwarded): a 101
        // is a broken answer, not one to pass on and leave the caller's connection hanging.
        if (status === 101) throw new Error("upstream answered 101 Switching Protocols unasked");
        // llhttp reads any three digits: one below 100 is no status a caller could be sent.
        if (status < 100) throw new Error(`upstream sent an invalid status (${status})`);
        if (status >= 100 && status < 200) {
          // An interim answer (100 Continue, 103 Early Hints): the real one follows. A worker
          // sending them without end is cut off (each is small; all of them are counted).
          if ((interims += this.#headBytes) > MAX_HEAD) {
            throw new Error("upstream sent too many interim answers");
          }
          this.#messageBegin();
          if (this.#start === this.#end) this.#start = this.#end = 0; // their bytes are spent
          continue;
        }
        return this.#head(status);
      }
      if (this.#end === this.#buf.length) this.#grow();
      let n: number | null;
      this.waiting = true;
      try {
        if (idleRead) {
          // Begun into the buffer's start, where this answer goes (#idle).
          n = await idleRead;
          idleRead = undefined;
        } else n = await this.socket.read(restOf(this.#buf, this.#end));
      } catch (err) {
        throw unsent ?? err;
      }
      if (n === null) {
        if (this.#end === 0) {
          if (unsent) throw unsent;
          return undefined;
        }
        throw new Error("upstream closed the connection in the middle of an answer head");
      }
      this.#end += n;
      this.heard = this.stirred = true;
      this.waiting = false;
    }
  }

  async #sendChunked(head: string, body: AsyncIterable<Uint8Array>): Promise<void> {
    await this.#write(this.#encode(head), head.length);
    const chunks = body[Symbol.asyncIterator]();
    while (true) {
      let next: IteratorResult<Uint8Array>;
      try {
        next = await chunks.next();
      } catch (err) {
        throw new RequestBodyError(err);
      }
      if (next.done) break;
      const chunk = next.value;
      if (chunk.byteLength === 0) continue;
      const size = `${chunk.byteLength.toString(16)}\r\n`;
      await this.#write(this.#encode(size), size.length);
      await this.#write(chunk, chunk.byteLength);
      await this.#write(CRLF, 2);
    }
    await this.#write(LAST_CHUNK, LAST_CHUNK.byteLength);
  }

  #grow(): void {
    const next = new Uint8Array(this.#buf.length * 2);
    next.set(this.#buf.subarray(0, this.#end));
    this.#buf = next;
  }

  #encode(s: string): Uint8Array {
    if (s.length > this.#out.length) this.#out = new Uint8Array(s.length * 2);
    latin1Into(s, this.#out, 0);
    return this.#out;
  }

  async #write(bytes: Uint8Array, length: number): Promise<void> {
    let o = 0;
    this.waiting = true;
    while (o < length) {
      o += await this.socket.write(bytes.subarray(o, length));
      this.wroteSome = true;
    }
    this.waiting = false;
    this.stirred = true;
  }

  /** Reads more; false at end of stream. */
  async #fill(): Promise<boolean> {
    // Positions of a head being read stay put; a body's bytes are copied out as they come.
    if (this.#start === this.#end && this.#headersDone) this.#start = this.#end = 0;
    if (this.#end === this.#buf.length) this.#grow();
    this.waiting = true;
    const n = await this.socket.read(restOf(this.#buf, this.#end));
    this.waiting = false;
    if (n === null) return false;
    this.#end += n;
    this.stirred = true;
    return true;
  }

  #parse(): void {
    while (this.#start < this.#end) {
      if (this.#paused) {
        this.#parser.resume();
        this.#paused = false;
      }
      this.#parser.noBody = this.#noBody;
      const error = this.#parser.execute(this.#buf, this.#start, this.#end);
      this.#apply();
      this.#start += this.#parser.consumed;
      // The head is consumed as it comes (its bytes stay in the buffer): counted, not measured.
      if (this.#headBytes > MAX_HEAD) throw new Error("upstream answer head is too large");
      if (this.#trailerBytes > MAX_HEAD) throw new Error("upstream trailer fields are too large");
      if (error === HPE.PAUSED) {
        this.#paused = true;
        return;
      }
      if (error !== 0) {
        throw new Error(`upstream sent a malformed answer: ${this.#parser.errorReason}`);
      }
    }
  }

  #head(status: number): Head {
    const r = this.#ranges;
    const base = this.#statusStart >= 0 ? this.#statusStart : r.length ? r[0] : 0;
    const last = r.length
      ? Math.max(r[r.length - 1], r[r.length - 3])
      : Math.max(this.#statusEnd, base);
    const text = headText(this.#buf, base, last);
    let headers: [string, string][] = [];
    let length: number | undefined;
    let chunked = false;
    let connection: string | undefined;
    for (let i = 0; i < r.length; i += 4) {
      const name = text.substring(r[i] - base, r[i + 1] - base).toLowerCase();
      const value = r[i + 2] < 0
        ? ""
        : text.substring(r[i + 2] - base, valueEnd(this.#buf, r, i) - base);
      if (name === "content-length") length = Number(value);
      else if (name === "transfer-encoding") {
        // llhttp frames any list that ends in chunked (`gzip, chunked`); no other coding is
        // undone here, and its bytes passed on as plain would reach the caller corrupted, unsaid.
        if (value.toLowerCase() !== "chunked") {
          throw new Error(`upstream sent Transfer-Encoding ${JSON.stringify(value)}`);
        }
        chunked = true;
      } else if (name === "connection") {
        connection = connection === undefined ? value : `${connection},${value}`;
      }
      if (passed(name)) headers.push([name, value]);
    }
    headers = withoutConnectionNamed(headers, connection);
    if (chunked) length = undefined;
    // An answer to HEAD keeps the length it declares (a GET's); it has no body all the same.
    if (status === 204 || status === 304) length = 0;
    const statusText = this.#statusStart < 0 ? "" : text.substring(0, this.#statusEnd - base);
    return { status, statusText, headers, length };
  }

  /** Whether the answer may leave the connection open for another request. */
  get keepAlive(): boolean {
    return this.#parser.keepAlive;
  }

  /**
   * The body that has arrived since the last call, as one piece (pieces
   * parsed from one read go on together: one write for the caller, not one
   * each); null at the end of the body.
   */
  async nextChunk(): Promise<Uint8Array | null> {
    while (true) {
      if (this.#body.length) {
        const b = this.#body;
        if (b.length === 1) return b.pop()!;
        this.#body = [];
        return concatBytes(b);
      }
      if (this.#bodyDone) return null;
      this.#parse();
      if (this.#body.length || this.#bodyDone) continue;
      if (!(await this.#fill())) {
        if (this.#parser.needsEof) {
          this.#parser.finish();
          this.#apply();
          this.#bodyDone = true;
          this.closed = true;
          continue;
        }
        throw new Error("upstream closed the connection before the body ended");
      }
    }
  }

  /** The body pieces already parsed, when the whole body is in (no read needed). */
  takeWholeBody(): Uint8Array[] | undefined {
    if (!this.#bodyDone) return undefined;
    const b = this.#body;
    this.#body = [];
    return b;
  }

  /** Back in the pool: reads (`#idleRead`), to hear at once if the worker closes it. */
  idle(): void {
    this.#start = this.#end = 0;
    const read = this.socket.read(this.#buf);
    this.#idleRead = read;
    const heard = () => {
      if (this.#idleRead !== read) return; // an exchange took it
      this.#idleRead = undefined;
      this.close(); // the worker closed it, or sent something unasked: out of use
    };
    read.then(heard, heard);
  }

  /** Whether the whole answer was read and nothing else arrived. */
  get clean(): boolean {
    return this.#bodyDone && this.#start === this.#end;
  }

  close(): void {
    this.closed = true;
    try {
      this.socket.close();
    } catch {
      // already closed
    }
  }

  free(): void {
    this.#parser.free();
  }
}

/** Methods whose request may be sent twice to the same effect (RFC 9110, 9.2.2). */
const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]);

/** Whether `req` may be sent again after a worker may have seen it. */
function mayRepeat(req: PoolRequest): boolean {
  if (IDEMPOTENT.has(req.method)) return true;
  for (const [k] of req.headers) {
    if (k === "idempotency-key" || k === "x-idempotency-key") return true;
  }
  return false;
}

const CRLF = new Uint8Array([13, 10]);
const LAST_CHUNK = new TextEncoder().encode("0\r\n\r\n");
const NO_BODY_METHODS = new Set(["GET", "HEAD", "DELETE", "OPTIONS"]);

/** Options for {@linkcode HttpPool}. */
export interface HttpPoolOptions {
  /**
   * A connection idle for longer is closed rather than reused; below the
   * 5 s keep-alive timeout common servers use. @default 4000
   */
  idleTimeoutMs?: number;
}

/** Keep-alive connection pools, one per `host:port`. */
export class HttpPool {
  #idle = new Map<string, Conn[]>();
  /** Every open connection, idle or exchanging. */
  #open = new Set<Conn>();
  #idleMs: number;
  #sweptAt = 0;
  #quietCheckedAt = 0;

  constructor(options: HttpPoolOptions = {}) {
    this.#idleMs = options.idleTimeoutMs ?? 4000;
  }

  /** Idle connections held open, all workers together (those the worker closed are let go). */
  get idleConnections(): number {
    let n = 0;
    for (const conns of this.#idle.values()) for (const c of conns) if (!c.closed) n++;
    return n;
  }

  /**
   * Cuts exchanges quiet past their `answerTimeoutMs` (looked at every
   * {@linkcode QUIET_CHECK_MS} at most), closes connections idle past the
   * timeout and forgets workers left with none (at most twice per timeout);
   * runs with the requests and the gateway's sweep.
   */
  sweep(now = performance.now()): void {
    if (now - this.#quietCheckedAt >= QUIET_CHECK_MS) {
      this.#quietCheckedAt = now;
      for (const c of this.#open) {
        if (c.quietLimitMs === 0) continue;
        if (c.stirred || !c.waiting) {
          // Not waiting on the worker now: the clock starts again at the next sweep, which
          // comes after any wait begun since (never before it: no cut comes early).
          c.stirred = !c.waiting;
          c.quietSince = now;
        } else if (now - c.quietSince > c.quietLimitMs) {
          c.timedOut = true;
          c.close();
        }
      }
    }
    if (now - this.#sweptAt < this.#idleMs / 2) return;
    this.#sweptAt = now;
    for (const [endpoint, conns] of this.#idle) {
      const live = conns.filter((c) => !c.closed && now - c.idleSince <= this.#idleMs);
      for (const c of conns) if (!live.includes(c)) this.#discard(c);
      if (live.length) this.#idle.set(endpoint, live);
      else this.#idle.delete(endpoint);
    }
  }

  /** The most recently used idle connection to `endpoint` still within the timeout. */
  #pooled(endpoint: string, now: number): Conn | undefined {
    const conns = this.#idle.get(endpoint);
    let c: Conn | undefined;
    while ((c = conns?.pop()) && (c.closed || now - c.idleSince > this.#idleMs)) this.#discard(c);
    return c;
  }

  /**
   * Sends one request to `endpoint` (`host:port`) and reads the answer's
   * head. `cancelable` receives a function that breaks the exchange off
   * (closing its connection) while it is in flight.
   */
  async send(
    endpoint: string,
    req: PoolRequest,
    cancelable?: (cancel: () => void) => void,
  ): Promise<UpstreamAnswer> {
    const replayable = !req.body || req.body instanceof Uint8Array;
    const now = performance.now();
    this.sweep(now);
    for (let attempt = 0;; attempt++) {
      // A kept-alive connection may turn out closed by the worker (its own idle timeout) only
      // once the request is on it: a body that cannot be sent again goes on a fresh one, and so
      // does a retry (another idle connection may be as stale as the first).
      const pooled = attempt === 0 && replayable ? this.#pooled(endpoint, now) : undefined;
      const conn = pooled ?? await this.#connect(endpoint);
      conn.quietLimitMs = req.answerTimeoutMs ?? 0;
      conn.quietSince = now;
      let inFlight = true;
      let cancelled = false;
      cancelable?.(() => {
        if (!inFlight) return;
        cancelled = true;
        conn.close();
      });
      try {
        const head = await conn.exchange(endpoint, req);
        if (!head) throw new ConnectError("it closed the connection before answering");
        const answer = this.#answer(endpoint, conn, head);
        return answer instanceof Promise ? await answer : answer;
      } catch (err) {
        // Closed already: the answer's head had come and reading its body failed.
        const answered = conn.closed || conn.heard;
        this.#discard(conn);
        if (err instanceof RequestBodyError) throw err.cause;
        if (cancelled) throw new ConnectError("the exchange was cancelled");
        if (conn.timedOut) throw new AnswerTimeout(conn.quietLimitMs);
        // A kept-alive connection the worker closed just as it was taken (a close heard while
        // idle puts it out of use): a fresh one, once — when nothing went out, or sending it
        // again does no harm (an idempotent method, an idempotency key), as Go's client does.
        if (pooled && !answered && (!conn.wroteSome || mayRepeat(req))) continue;
        if (answered) {
          // Its body read whole here: the read's own failure says so already.
          if (err instanceof AnswerBroken) throw err;
          throw new AnswerBroken(`it broke off its answer: ${(err as Error).message}`, {
            cause: err,
          });
        }
        // It closed while the request went out, answering nothing: it is there (not
        // unreachable), and may have begun the request.
        if (conn.writeFailed) {
          throw new AnswerBroken(
            `it closed the connection while the request was sent: ${(err as Error).message}`,
            { cause: err },
          );
        }
        // It took the whole request and closed answering nothing: it may have run it, so only
        // a request that may be sent twice goes to another worker.
        if (conn.wroteSome && !mayRepeat(req)) {
          throw new AnswerBroken(
            "it closed the connection without answering, after taking the whole request (it may have run it)",
            { cause: err },
          );
        }
        throw new ConnectError(err instanceof ConnectError ? err.message : (err as Error).message, {
          cause: err,
          sent: conn.wroteSome,
        });
      } finally {
        inFlight = false;
      }
    }
  }

  async #connect(endpoint: string): Promise<Conn> {
    try {
      const socket = await Deno.connect(splitEndpoint(endpoint));
      socket.setNoDelay(true);
      const conn = new Conn(socket);
      this.#open.add(conn);
      return conn;
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === "EMFILE" || code === "ENFILE") {
        // This process (or host) is out of descriptors: nothing is wrong with the worker.
        throw new InferxError(
          "unavailable",
          `The gateway cannot open a connection to a worker: ${(err as Error).message}`,
          { cause: err, retryable: true },
        );
      }
      throw new ConnectError(`cannot connect to it: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  #discard(conn: Conn): void {
    this.#open.delete(conn);
    conn.close();
    conn.free();
  }

  #release(endpoint: string, conn: Conn): void {
    if (conn.closed || !conn.keepAlive || !conn.clean) return this.#discard(conn);
    let idle = this.#idle.get(endpoint);
    if (!idle) this.#idle.set(endpoint, idle = []);
    if (idle.length >= IDLE_PER_ENDPOINT) return this.#discard(conn);
    conn.quietLimitMs = 0;
    conn.idleSince = performance.now();
    idle.push(conn);
    conn.idle();
  }

  /** The answer to hand out: whole at once when its body came with the head. */
  #answer(endpoint: string, conn: Conn, head: Head): UpstreamAnswer | Promise<UpstreamAnswer> {
    let done = false;
    const finish = (clean: boolean) => {
      if (done) return;
      done = true;
      if (clean) this.#release(endpoint, conn);
      else this.#discard(conn);
    };
    const answer: UpstreamAnswer = {
      status: head.status,
      statusText: head.statusText,
      headers: head.headers,
      length: head.length,
      read: async () => {
        if (done) return null;
        try {
          const c = await conn.nextChunk();
          if (c === null) finish(true);
          return c;
        } catch (err) {
          finish(false);
          if (conn.timedOut) throw new AnswerTimeout(conn.quietLimitMs);
          throw new AnswerBroken(`it broke off its answer: ${(err as Error).message}`, {
            cause: err,
          });
        }
      },
      cancel: () => finish(false),
    };
    const whole = conn.takeWholeBody();
    if (whole) {
      // The usual case: the body came with the head.
      finish(true);
      answer.bytes = concatBytes(whole);
    } else if (head.length !== undefined && head.length <= BUFFER_LIMIT) {
      // Read a sized answer whole: the connection goes back at once.
      return (async () => {
        const parts: Uint8Array[] = [];
        for (let c; (c = await answer.read()) !== null;) parts.push(c);
        answer.bytes = concatBytes(parts);
        return answer;
      })();
    }
    return answer;
  }

  /** Closes every idle connection. */
  close(): void {
    for (const conns of this.#idle.values()) for (const c of conns) this.#discard(c);
    this.#idle.clear();
  }
}
