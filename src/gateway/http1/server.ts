/**
 * An HTTP/1.1 server on raw sockets (`Deno.listen`), for the gateway's warm
 * path: requests are framed by llhttp (strict: smuggling attempts are
 * refused), handed to one handler with their headers as a list, and answered
 * with the head and a sized body in one write. What `Deno.serve` would add
 * per request — `Request`, `Headers` and `Response` objects, their streams —
 * is built only when a handler asks for it ({@linkcode toRequest},
 * {@linkcode Http1Response.sendResponse}).
 *
 * Framing: Content-Length and chunked bodies both ways, pipelining (answers
 * in order), `Expect: 100-continue`, HTTP/1.0 (keep-alive only when asked),
 * HEAD. Limits: head size and header count (431), URL length (414), header
 * and keep-alive idle timeouts (408 / close), body limits are the handler's
 * ({@linkcode Http1Request.readAll}). A client that goes away while its
 * request is served is reported through {@linkcode Http1Request.onAbort}.
 *
 * @module
 */
import { BodiesBusy, BodyBudget, BodyTooLarge, UNBOUNDED_BODIES } from "./body.ts";
import { STATUS_CODES } from "node:http";
import { errorBody, httpStatus, InferxError, ValidationError } from "../../common/errors.ts";
import { type Backoff, cappedBackoff } from "../../common/retry.ts";
import { concatBytes, copyBytes, headText, latin1Into, restOf, valueEnd } from "./bytes.ts";
import { HOP_BY_HOP } from "./fields.ts";
import { EV, HPE, Http1Parser } from "../../common/llhttp.ts";

/** Limits and timeouts of a {@linkcode Http1Server}. */
export interface Http1Limits {
  /** Largest request head (request line and headers) in bytes. @default 65536 */
  maxHeadBytes: number;
  /** Most header fields in one request. @default 128 */
  maxHeaders: number;
  /** Longest request target. @default 16384 */
  maxUrlBytes: number;
  /** Time allowed to receive a whole head once it started (ms). @default 30000 */
  headersTimeoutMs: number;
  /** Time an idle keep-alive connection is kept (ms). @default 60000 */
  keepAliveTimeoutMs: number;
  /** Time a request body may stall between bytes (ms). @default 60000 */
  bodyTimeoutMs: number;
  /**
   * Time a write to the client may wait for the client to take any of it
   * (ms), as nginx's `send_timeout`: a client that stops reading is cut off
   * rather than holding its answer (and the worker behind it). @default 60000
   */
  sendTimeoutMs: number;
}

/** Options of {@linkcode serveHttp1}. */
export interface Http1ServerOptions extends Partial<Http1Limits> {
  /** @default "127.0.0.1" */
  hostname?: string;
  port: number;
  /** Share the port with other listeners (SO_REUSEPORT; needs `--unstable-net`). @default false */
  reusePort?: boolean;
  /** Answers each request; it must answer through `res` before it resolves. */
  handler: (req: Http1Request, res: Http1Response) => Promise<void> | void;
  /** Called with errors a handler threw before answering (it then answers 500). */
  onError?: (err: unknown) => void;
  /**
   * What bodies read whole may hold while they arrive, all connections
   * together (`body.ts`). @default unbounded
   */
  bodyBudget?: BodyBudget;
}

export { BodiesBusy, BodyBudget, BodyTooLarge, UNBOUNDED_BODIES };

/** The peer closed the connection, or the request broke off. */
export class ConnectionClosed extends Error {
  constructor(message = "The client closed the connection") {
    super(message);
    this.name = "ConnectionClosed";
  }
}

/**
 * A request body that breaks HTTP's framing (a bad chunk size, say): 400
 * `invalid`. The connection closes after the answer.
 */
export class MalformedBody extends InferxError {
  constructor(message: string) {
    super("invalid", message);
    this.name = "MalformedBody";
  }
}

const DEFAULTS: Http1Limits = {
  maxHeadBytes: 64 * 1024,
  maxHeaders: 128,
  maxUrlBytes: 16 * 1024,
  headersTimeoutMs: 30_000,
  keepAliveTimeoutMs: 60_000,
  bodyTimeoutMs: 60_000,
  sendTimeoutMs: 60_000,
};

/** Unparsed bytes a connection reads ahead of its handler. */
const READ_AHEAD = 256 * 1024;
/** Unread body bytes drained after an answer to keep the connection; beyond, it closes. */
const DRAIN_LIMIT = 64 * 1024;
/** How long a body answered before it was read is read and dropped at most, and idle. */
const LINGER_MS = 5_000;
const LINGER_IDLE_MS = 1_000;
/** How long a shutdown keeps idle connections open for a request already on its way. */
export const SHUTDOWN_LINGER_MS = 250;

let dateHeader = new Date().toUTCString();

/** A running server. */
export interface Http1Server {
  readonly addr: Deno.NetAddr;
  /** Open connections (for tests and metrics). */
  readonly connections: number;
  /** Stops accepting, lets requests in progress finish (up to `graceMs`), closes the rest. */
  shutdown(graceMs?: number): Promise<void>;
}

/** The first and the longest pause after a failed accept. */
export const ACCEPT_RETRY = { firstMs: 5, maxMs: 1000 } as const;

/**
 * Accepts connections until `closing()` says so once an accept fails. A
 * failed accept (EMFILE, ENFILE: out of descriptors) is retried after a
 * pause that doubles from {@linkcode ACCEPT_RETRY}.firstMs up to .maxMs
 * (`cappedBackoff`) and starts over after an accept succeeds, as Go's
 * server does: the connections already open keep being served, and the
 * loop does not spin on an error that only time can clear. The first
 * failure of a run is reported to `onError`.
 */
export async function acceptLoop(
  listener: { accept(): Promise<Deno.TcpConn> },
  closing: () => boolean,
  onConn: (sock: Deno.TcpConn) => void,
  opts: { onError?: (err: unknown) => void; sleep?: (ms: number) => Promise<void> } = {},
): Promise<void> {
  const sleep = opts.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  let pause: Backoff | undefined;
  while (true) {
    let sock: Deno.TcpConn;
    try {
      sock = await listener.accept();
    } catch (err) {
      if (closing()) return;
      if (!pause) opts.onError?.(err);
      pause = pause ? pause.next() : cappedBackoff(ACCEPT_RETRY.firstMs, ACCEPT_RETRY.maxMs);
      await sleep(pause.duration);
      continue;
    }
    pause = undefined;
    onConn(sock);
  }
}

/** Starts an HTTP/1.1 server. */
export function serveHttp1(options: Http1ServerOptions): Http1Server {
  const limits: Http1Limits = { ...DEFAULTS };
  for (const k of Object.keys(DEFAULTS) as (keyof Http1Limits)[]) {
    if (options[k] !== undefined) limits[k] = options[k]!;
  }
  const listener = Deno.listen({
    hostname: options.hostname ?? "127.0.0.1",
    port: options.port,
    ...(options.reusePort ? { reusePort: true } : {}),
  } as Deno.TcpListenOptions);
  const conns = new Set<ServerConnection>();
  let closing = false;
  const sweep = setInterval(() => {
    dateHeader = new Date().toUTCString();
    const now = performance.now();
    for (const c of conns) c.checkTimeouts(now);
  }, 1000);
  Deno.unrefTimer(sweep);
  const accepting = acceptLoop(listener, () => closing, (sock) => {
    sock.setNoDelay(true);
    const c = new ServerConnection(sock, limits, options);
    conns.add(c);
    c.serve().finally(() => conns.delete(c));
  }, { onError: options.onError });
  return {
    addr: listener.addr as Deno.NetAddr,
    get connections() {
      return conns.size;
    },
    async shutdown(graceMs = 10_000) {
      closing = true;
      listener.close();
      // Idle connections stay open a moment: a request already on its way on one is answered
      // (with `Connection: close`) rather than met by a closed socket, which leaves its caller
      // unsure whether it ran. Each connection closes after the request it is serving: marked
      // before this returns, so that an answer the caller of shutdown() makes at once (a
      // waiting call's 503) says so; and again for those accepted meanwhile.
      for (const c of conns) c.closeAfterRequest();
      await accepting;
      clearInterval(sweep);
      for (const c of conns) c.closeAfterRequest();
      const start = Date.now();
      const deadline = start + graceMs;
      const lingered = start + Math.min(graceMs, SHUTDOWN_LINGER_MS);
      while (conns.size && Date.now() < deadline) {
        if (Date.now() >= lingered) { for (const c of conns) c.closeIfIdle(); }
        if (!conns.size) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      for (const c of conns) c.close(true);
    },
  };
}

type Phase = "idle" | "head" | "handling";

/** One request as received. */
export class Http1Request {
  readonly method: string;
  /** The request target as sent (`/path?query`). */
  readonly url: string;
  /** Header fields in order, names in lower case. */
  readonly headers: [string, string][];
  /** 0 for HTTP/1.0, 1 for HTTP/1.1. */
  readonly httpMinor: number;
  /** The connection's peer. */
  readonly remoteAddr: Deno.NetAddr;
  /** Declared body length; undefined when chunked or absent. */
  readonly contentLength: number | undefined;
  /** Whether a body follows (a length above 0, or chunked). */
  readonly hasBody: boolean;
  readonly #conn: ServerConnection;
  #aborts?: (() => void)[];

  constructor(
    conn: ServerConnection,
    init: {
      method: string;
      url: string;
      headers: [string, string][];
      httpMinor: number;
      contentLength: number | undefined;
      hasBody: boolean;
    },
  ) {
    this.#conn = conn;
    this.method = init.method;
    this.url = init.url;
    this.headers = init.headers;
    this.httpMinor = init.httpMinor;
    this.contentLength = init.contentLength;
    this.hasBody = init.hasBody;
    this.remoteAddr = conn.remoteAddr;
  }

  /**
   * The value of header `name` (lower case); a repeated one's values joined
   * with `, `, as `Headers.get` reads them, so that the warm path and the
   * other routes read a request alike (two `Authorization` fields are one
   * invalid credential on both, not the first one's on one of them).
   */
  header(name: string): string | undefined {
    const h = this.headers;
    let value: string | undefined;
    for (let i = 0; i < h.length; i++) {
      if (h[i][0] === name) value = value === undefined ? h[i][1] : `${value}, ${h[i][1]}`;
    }
    return value;
  }

  /** The same as {@linkcode header}, shaped like `Headers.get`. */
  get(name: string): string | undefined {
    return this.header(name);
  }

  /** Whether the client went away before the answer was complete. */
  get aborted(): boolean {
    return this.#conn.eof && this.#aborts !== undefined;
  }

  /**
   * Whether it was the server's shutdown, not the client, that ended the
   * connection before the answer was complete (its grace ran out).
   */
  get cutByStop(): boolean {
    return this.#conn.stopped;
  }

  /** Runs `fn` once if the client goes away before the answer is complete. */
  onAbort(fn: () => void): void {
    if (this.#conn.eof) return fn();
    (this.#aborts ??= []).push(fn);
  }

  /** @internal */
  fireAbort(): void {
    const a = this.#aborts;
    this.#aborts = undefined;
    if (a) { for (const fn of a) fn(); }
  }

  /** The whole body (empty when none); throws {@linkcode BodyTooLarge} past `limit`. */
  readAll(limit: number): Promise<Uint8Array<ArrayBuffer>> {
    return this.#conn.readBody(this, limit);
  }

  /**
   * The whole body when it has already arrived with the head (the usual
   * case), without waiting; undefined when more must be read.
   */
  bodyNow(limit: number): Uint8Array | undefined {
    return this.#conn.bodyNow(this, limit);
  }

  /** The body as it arrives; errors with {@linkcode BodyTooLarge} past `limit`. */
  async *chunks(limit: number): AsyncGenerator<Uint8Array> {
    let size = 0;
    while (true) {
      const chunk = await this.#conn.nextBodyChunk(this);
      if (chunk === null) return;
      size += chunk.byteLength;
      if (size > limit) {
        this.#conn.keepAlive = false;
        throw new BodyTooLarge(limit);
      }
      yield chunk;
    }
  }
}

/** The answer to one request. */
export class Http1Response {
  readonly #conn: ServerConnection;
  readonly #head: boolean;
  #state: "new" | "streaming" | "done" = "new";
  #chunked = false;

  constructor(conn: ServerConnection, head: boolean) {
    this.#conn = conn;
    this.#head = head;
  }

  /** Whether the head has gone out. */
  get headersSent(): boolean {
    return this.#state !== "new";
  }

  /** Whether the answer is complete. */
  get finished(): boolean {
    return this.#state === "done";
  }

  /** Answers with a whole body: the head and the body in one write. */
  send(
    status: number,
    headers: Iterable<readonly [string, string]>,
    body?: Uint8Array | string | null,
    statusText?: string,
  ): Promise<void> {
    try {
      this.#begin();
    } catch (err) {
      return Promise.reject(err);
    }
    const bytes = typeof body === "string" ? ENCODER.encode(body) : body;
    const noBody = status < 200 || status === 204 || status === 304;
    const length = noBody ? -1 : bytes?.byteLength ?? 0;
    const headLen = this.#conn.head(status, statusText, headers, length, false);
    this.#state = "done";
    if (this.#head || noBody || !bytes?.byteLength) return this.#conn.writeOut(headLen);
    return this.#conn.writeWithBody(headLen, bytes);
  }

  /**
   * Starts a streamed answer: `length` sized, else chunked (HTTP/1.1) or
   * until the connection closes (HTTP/1.0).
   */
  async start(
    status: number,
    headers: Iterable<readonly [string, string]>,
    length?: number,
    statusText?: string,
  ): Promise<void> {
    this.#begin();
    const noBody = this.#head || status < 200 || status === 204 || status === 304;
    this.#chunked = !noBody && length === undefined && this.#conn.httpMinor === 1;
    if (!noBody && length === undefined && !this.#chunked) this.#conn.keepAlive = false;
    const out = this.#conn.head(status, statusText, headers, length ?? -1, this.#chunked);
    this.#state = noBody ? "done" : "streaming";
    await this.#conn.writeOut(out);
  }

  /** Writes a piece of a streamed body. */
  async write(chunk: Uint8Array): Promise<void> {
    if (this.#state !== "streaming") {
      if (this.#state === "done" && this.#head) return;
      throw new Error("write() needs start() first");
    }
    if (chunk.byteLength === 0) return;
    if (!this.#chunked) return await this.#conn.write(chunk, chunk.byteLength);
    await this.#conn.writeChunk(chunk);
  }

  /** Ends a streamed body. */
  async end(): Promise<void> {
    if (this.#state !== "streaming") return;
    this.#state = "done";
    if (this.#chunked) await this.#conn.write(LAST_CHUNK, LAST_CHUNK.byteLength);
  }

  /**
   * Answers with a `Response` (from a Hono app): a body that is complete at
   * once goes out sized; one that is still being produced is streamed.
   */
  async sendResponse(res: Response): Promise<void> {
    const headers: [string, string][] = [];
    let length: number | undefined;
    for (const [k, v] of res.headers) {
      if (k === "content-length") length = Number(v);
      else if (!HOP_BY_HOP.has(k)) headers.push([k, v]);
    }
    if (!res.body) return await this.send(res.status, headers, null, res.statusText);
    const reader = res.body.getReader();
    const sized = length !== undefined && Number.isSafeInteger(length) ? length : undefined;
    try {
      // Take what the body already holds; a body still being produced
      // (server-sent events) shows itself by not answering within a tick.
      const parts: Uint8Array[] = [];
      let size = 0;
      let pending: Promise<ReadableStreamReadResult<Uint8Array>> | undefined = reader.read();
      while (pending) {
        let r;
        try {
          r = await Promise.race([pending, nextTick()]);
        } catch (err) {
          // The body failed before its head went (a worker's stream broken off at once): the
          // status is the handler's, sent with what came, and the body cut as it would be a
          // moment later (not an error answer of the gateway's own, which a client may take
          // for one to try again).
          await this.start(res.status, headers, sized, res.statusText);
          if (!this.#head) { for (const p of parts) await this.write(p); }
          throw err;
        }
        if (r === TICK) break;
        pending = undefined;
        if (r.done) {
          return await this.send(res.status, headers, concatBytes(parts), res.statusText);
        }
        parts.push(r.value);
        size += r.value.byteLength;
        if (size < 1024 * 1024) pending = reader.read();
      }
      await this.start(res.status, headers, sized, res.statusText);
      if (this.#head) {
        // HEAD: the head is all there is; a stream still being produced (events) is let go.
        await reader.cancel().catch(() => {});
        return;
      }
      for (const p of parts) await this.write(p);
      while (true) {
        const r = await (pending ?? reader.read());
        pending = undefined;
        if (r.done) break;
        await this.write(r.value);
      }
      await this.end();
    } catch (err) {
      await reader.cancel(err).catch(() => {});
      throw err;
    }
  }

  #begin(): void {
    if (this.#state !== "new") throw new Error("The answer has already started");
  }
}

const TICK = Symbol("tick");
function nextTick(): Promise<typeof TICK> {
  return new Promise((resolve) => setTimeout(resolve, 0, TICK));
}

const ENCODER = new TextEncoder();
const LAST_CHUNK = ENCODER.encode("0\r\n\r\n");

/** Whether `target` is an absolute-form request target (`http://host/path`) a URL can hold. */
function absoluteTarget(target: string): boolean {
  if (!/^https?:\/\/[^/?#]/i.test(target)) return false;
  try {
    new URL(target);
    return true;
  } catch {
    return false;
  }
}

/**
 * A Host field (RFC 9110 §7.2): a name, an IPv4 address or a bracketed IPv6
 * one, and an optional port. What `toRequest` puts in a URL's authority.
 */
const HOST = /^(?:[A-Za-z0-9\-._~!$&'()*+,;=]+|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?$/;

/**
 * Why the Host fields of a request whose target is a path are not one Host
 * (RFC 9110 §7.2: a name or address and an optional port), or undefined
 * (none is not wrong: HTTP/1.0 may leave it out).
 */
export function hostProblem(headers: readonly [string, string][]): string | undefined {
  let host: string | undefined;
  for (const [k, v] of headers) {
    if (k !== "host") continue;
    if (host !== undefined) return "Malformed HTTP request: more than one Host";
    host = v.trim();
  }
  if (host === undefined) return undefined;
  const m = HOST.exec(host);
  return !m || (m[1] !== undefined && Number(m[1]) > 65535)
    ? "Malformed HTTP request: invalid Host header"
    : undefined;
}

/**
 * Builds a `Request` for handlers that want one (a Hono app). Routing sees the
 * request target's path only: the Host field (or an absolute target's
 * authority) becomes the URL's authority once checked. Throws a
 * {@linkcode ValidationError} (400) for a Host field that is not one, or
 * several.
 */
export function toRequest(
  req: Http1Request,
  bodyLimit: number,
  signal?: AbortSignal,
): Request {
  let host: string;
  let target = req.url;
  if (!target.startsWith("/")) {
    const u = new URL(target); // the parser let only absolute http(s) targets through
    host = u.host;
    target = `${u.pathname}${u.search}`;
  } else {
    const problem = hostProblem(req.headers);
    if (problem) throw new ValidationError(problem, "host");
    const own = req.remoteAddr.hostname; // HTTP/1.0 may leave Host out
    host = req.header("host")?.trim() ?? (own.includes(":") ? `[${own}]` : own);
  }
  const headers = new Headers();
  for (const [k, v] of req.headers) headers.append(k, v);
  let body: ReadableStream<Uint8Array> | null = null;
  if (req.hasBody && req.method !== "GET" && req.method !== "HEAD") {
    const it = req.chunks(bodyLimit);
    body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        try {
          const r = await it.next();
          if (r.done) controller.close();
          else controller.enqueue(r.value);
        } catch (err) {
          controller.error(err);
        }
      },
      async cancel() {
        await it.return(undefined);
      },
    }, { highWaterMark: 0 }); // nothing read (no 100 Continue sent) until the route reads it
  }
  const url = `http://${host}${target}`;
  if (!URL.canParse(url)) {
    throw new ValidationError("Malformed HTTP request: invalid Host header", "host");
  }
  return new Request(url, {
    // HEAD answered as GET is, its body left out by the response (with its length kept: the
    // app's own HEAD answers say none); a call's HEAD goes to its worker as HEAD.
    method: req.method === "HEAD" && !target.startsWith("/funccall/") ? "GET" : req.method,
    headers,
    body,
    signal,
    // @ts-ignore: a streamed request body needs half duplex (not in every lib's types)
    duplex: "half",
  });
}

/** One client connection: reads ahead, parses, answers requests in order. */
class ServerConnection {
  readonly remoteAddr: Deno.NetAddr;
  readonly #sock: Deno.TcpConn;
  readonly #limits: Http1Limits;
  readonly #opts: Http1ServerOptions;
  readonly #parser: Http1Parser;
  #buf = new Uint8Array(16 * 1024);
  #start = 0;
  #end = 0;
  #out = new Uint8Array(16 * 1024);
  eof = false;
  /** Closed by the server's shutdown, with a request still being served. */
  stopped = false;
  #closed = false;
  /** The reader waiting for bytes, and the pump waiting for room. */
  #dataWaiter?: () => void;
  #roomWaiter?: () => void;
  #phase: Phase = "idle";
  #since = performance.now();
  #paused = false;
  #pausedUpgrade = false;
  #error?: { status: number; message: string };

  // The message being parsed.
  #headStart = 0;
  #urlStart = -1;
  #urlEnd = -1;
  #ranges: number[] = [];
  #lastWasValue = false;
  #headersDone = false;
  #bodyDone = false;
  #body: Uint8Array[] = [];
  #bodyBytes = 0;
  /** Body bytes of this message, and the bytes its body phase took on the wire (framing too). */
  #bodyTotal = 0;
  #bodyWire = 0;
  /** Bytes of the trailer fields after a chunked body: never headers, and bounded. */
  #trailerBytes = 0;
  #current?: Http1Request;
  #continueSent = false;
  #expectContinue = false;
  keepAlive = true;
  httpMinor = 1;

  constructor(sock: Deno.TcpConn, limits: Http1Limits, opts: Http1ServerOptions) {
    this.#sock = sock;
    this.remoteAddr = sock.remoteAddr as Deno.NetAddr;
    this.#limits = limits;
    this.#opts = opts;
    this.#parser = new Http1Parser("request");
  }

  // ---------------------------------------------------------------- parsing

  #messageBegin(): void {
    this.#phase = "head";
    this.#since = performance.now();
    this.#urlStart = this.#urlEnd = -1;
    this.#ranges.length = 0;
    this.#lastWasValue = false;
    this.#headersDone = this.#bodyDone = false;
    this.#body = [];
    this.#bodyBytes =
      this.#bodyTotal =
      this.#bodyWire =
      this.#trailerBytes =
        0;
    this.#continueSent = this.#expectContinue = false;
  }

  /** Applies what the parser found: the head's spans, body pieces, the message's end. */
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
        case EV.URL:
          if (this.#urlStart < 0) this.#urlStart = at;
          this.#urlEnd = end;
          break;
        case EV.HEADER_FIELD:
          // After the head: trailer fields of a chunked body. Counted, never taken as headers.
          if (this.#headersDone) {
            this.#trailerBytes += end - at;
            break;
          }
          if (r.length && !this.#lastWasValue) r[r.length - 3] = end; // a continued name
          else r.push(at, end, -1, -1);
          this.#lastWasValue = false;
          break;
        case EV.HEADER_VALUE:
          if (this.#headersDone) {
            this.#trailerBytes += end - at;
            break;
          }
          if (r[r.length - 2] < 0) r[r.length - 2] = at;
          r[r.length - 1] = end;
          this.#lastWasValue = true;
          break;
        case EV.HEADERS_COMPLETE:
          this.#headersDone = true;
          break;
        case EV.BODY:
          this.#body.push(copyBytes(this.#buf, at, end));
          this.#bodyBytes += end - at;
          this.#bodyTotal += end - at;
          break;
        case EV.MESSAGE_COMPLETE:
          this.#bodyDone = true;
          break;
      }
    }
  }

  /** Parses what is buffered (up to a message's end); false when it is malformed (#error set). */
  #parse(): boolean {
    while (this.#start < this.#end) {
      if (this.#paused) {
        if (this.#pausedUpgrade) this.#parser.resumeAfterUpgrade();
        else this.#parser.resume();
        this.#paused = this.#pausedUpgrade = false;
      }
      const inBody = this.#headersDone && !this.#bodyDone;
      const error = this.#parser.execute(this.#buf, this.#start, this.#end);
      this.#apply();
      this.#start += this.#parser.consumed;
      if (inBody) this.#bodyWire += this.#parser.consumed;
      if (this.#trailerBytes > this.#limits.maxHeadBytes) {
        this.#error = { status: 431, message: "Request trailer fields are too large" };
        return false;
      }
      // Chunk framing past its own size (tiny chunks make at most a few bytes of it a body
      // byte): chunk extensions, which are no body, counted by no limit or timeout.
      if (this.#bodyWire > 16 * this.#bodyTotal + 65_536) {
        this.#error = {
          status: 400,
          message: "Malformed HTTP request: chunk extensions too large",
        };
        return false;
      }
      if (error === HPE.PAUSED || error === HPE.PAUSED_UPGRADE) {
        // A message ended. Upgrades are ignored (RFC 9110 §7.8): the connection stays HTTP/1.1.
        this.#paused = true;
        this.#pausedUpgrade = error === HPE.PAUSED_UPGRADE;
        if (this.#pausedUpgrade && !this.#headersDone) continue; // the upgrade stop itself
        break;
      }
      if (error !== 0) {
        const method = error === HPE.INVALID_METHOD ? this.#extensionMethod() : undefined;
        this.#error = method !== undefined
          ? { status: 501, message: `${method} is not supported` }
          : { status: 400, message: `Malformed HTTP request: ${this.#parser.errorReason}` };
        return false;
      }
      if (this.#phase === "head" && !this.#headersDone) {
        if (this.#start - this.#headStart > this.#limits.maxHeadBytes) {
          // A target past its own limit already is what makes the head too large: said so.
          this.#error = this.#urlEnd - this.#urlStart > this.#limits.maxUrlBytes
            ? { status: 414, message: "Request target is too long" }
            : { status: 431, message: "Request head is too large" };
          return false;
        }
      }
    }
    this.#wakeRoom();
    return true;
  }

  /**
   * The method of a request line whose method llhttp does not know, when it
   * is a token (RFC 9110 §9.1: `FOO`, `Get`): a method this server does not
   * implement (501), where other bytes are no HTTP (400). Up to 32
   * characters, said as sent.
   */
  #extensionMethod(): string | undefined {
    const line = this.#buf.subarray(this.#headStart, Math.min(this.#end, this.#headStart + 33));
    const sp = line.indexOf(32);
    if (sp < 1) return undefined;
    for (let i = 0; i < sp; i++) if (!TCHAR.test(String.fromCharCode(line[i]))) return undefined;
    return String.fromCharCode(...line.subarray(0, sp));
  }

  /** Waits for more bytes; false at end of stream. */
  async #fill(): Promise<boolean> {
    if (this.eof) return false;
    this.#wakeRoom();
    await new Promise<void>((resolve) => this.#dataWaiter = resolve);
    return this.#end > this.#start || !this.eof;
  }

  #wakeRoom(): void {
    const w = this.#roomWaiter;
    if (w && this.#end - this.#start < READ_AHEAD) {
      this.#roomWaiter = undefined;
      w();
    }
  }

  /** Reads from the socket ahead of the parser, up to READ_AHEAD bytes. */
  async #pump(): Promise<void> {
    while (!this.#closed) {
      if (this.#end - this.#start >= READ_AHEAD) {
        await new Promise<void>((r) => this.#roomWaiter = r); // the parser will take some
        continue;
      }
      this.#makeRoom();
      let n: number | null;
      try {
        n = await this.#sock.read(restOf(this.#buf, this.#end));
      } catch {
        n = null;
      }
      if (n === null) {
        this.eof = true;
        this.#notify();
        if (this.#current && this.#phase === "handling") this.#current.fireAbort();
        return;
      }
      this.#end += n;
      this.#notify();
    }
  }

  #notify(): void {
    const w = this.#dataWaiter;
    this.#dataWaiter = undefined;
    w?.();
  }

  /** Room at the end of the buffer: compacts between heads, grows within one. */
  #makeRoom(): void {
    const inHead = this.#phase === "head" && !this.#headersDone;
    if (!inHead) {
      if (this.#start === this.#end) {
        this.#start = this.#end = 0;
      } else if (this.#start > this.#buf.length >> 1) {
        this.#buf.copyWithin(0, this.#start, this.#end);
        this.#end -= this.#start;
        this.#start = 0;
      }
    }
    if (this.#end === this.#buf.length) {
      const next = new Uint8Array(this.#buf.length * 2);
      next.set(this.#buf.subarray(0, this.#end));
      this.#buf = next;
    }
  }

  /** The next request's head, or undefined when the connection is done. */
  /** Parses toward the next request: it, null when more bytes are needed, undefined when done. */
  #nextHead(): Http1Request | null | undefined {
    if (this.#phase === "idle") this.#headStart = this.#start;
    if (!this.#parse()) return undefined;
    if (this.#headersDone) return this.#request();
    if (this.eof) {
      if (this.#phase === "head") this.keepAlive = false; // a head cut short: nothing to answer
      return undefined;
    }
    return null;
  }

  /** Resolves when the pump has read more (or the peer closed). */
  #moreData(): Promise<void> {
    this.#wakeRoom();
    return new Promise<void>((resolve) => this.#dataWaiter = resolve);
  }

  #request(): Http1Request | undefined {
    const p = this.#parser;
    this.httpMinor = p.httpMinor;
    this.keepAlive = p.keepAlive;
    const r = this.#ranges;
    if (r.length / 4 > this.#limits.maxHeaders) {
      this.#error = { status: 431, message: `More than ${this.#limits.maxHeaders} header fields` };
      return undefined;
    }
    if (this.#urlEnd - this.#urlStart > this.#limits.maxUrlBytes) {
      this.#error = { status: 414, message: "Request target is too long" };
      return undefined;
    }
    const last = r.length ? Math.max(r[r.length - 1], r[r.length - 3]) : this.#urlEnd;
    if (last - this.#headStart > this.#limits.maxHeadBytes) {
      this.#error = { status: 431, message: "Request head is too large" };
      return undefined;
    }
    // One decode of the head; names and values are substrings of it.
    const base = this.#urlStart;
    const text = headText(this.#buf, base, last);
    const headers: [string, string][] = new Array(r.length / 4);
    let contentLength: number | undefined;
    let chunked = false;
    let coding: string | undefined;
    for (let i = 0, j = 0; i < r.length; i += 4, j++) {
      const name = text.substring(r[i] - base, r[i + 1] - base).toLowerCase();
      const value = r[i + 2] < 0
        ? ""
        : text.substring(r[i + 2] - base, valueEnd(this.#buf, r, i) - base);
      headers[j] = [name, value];
      if (name === "content-length") contentLength = Number(value);
      else if (name === "transfer-encoding") {
        chunked = true;
        // llhttp frames any list that ends in chunked (`gzip, chunked`); no other coding is
        // undone here, and passing its bytes on as if plain would corrupt them unseen.
        if (value.trim().toLowerCase() !== "chunked") coding = value;
      } else if (name === "expect" && value.toLowerCase() === "100-continue") {
        // An HTTP/1.0 client knows no interim answers (RFC 9110 §10.1.1): ignored.
        this.#expectContinue = p.httpMinor >= 1;
      }
    }
    if (p.httpMajor !== 1) {
      // llhttp reads any version line (`HTTP/2.0`): one spoken here is 1.0 or 1.1 only.
      this.#error = {
        status: 505,
        message: `HTTP/${p.httpMajor}.${p.httpMinor} is not supported: HTTP/1.1 and HTTP/1.0 are`,
      };
      return undefined;
    }
    if (chunked && p.httpMinor === 0) {
      // HTTP/1.0 has no chunked coding: such a message's framing is unknown (RFC 9112 §6.1).
      this.#error = {
        status: 400,
        message: "Malformed HTTP request: Transfer-Encoding in an HTTP/1.0 request",
      };
      return undefined;
    }
    if (coding !== undefined) {
      this.#error = {
        status: 501,
        message: `Transfer-Encoding ${
          JSON.stringify(coding)
        } is not supported: a body may be sent chunked or with Content-Length, with no other coding`,
      };
      return undefined;
    }
    const method = p.method;
    if (method === "CONNECT" || method === "TRACE" || method === "TRACK") {
      // Not on any path (a 405 would owe an Allow of the path's methods): not implemented.
      this.#error = { status: 501, message: `${method} is not supported` };
      return undefined;
    }
    // Origin form (`/path?query`) or absolute form (`http://host/path`); `*` and the rest are refused.
    const first = text.charCodeAt(0);
    if (first !== 47 /* / */ && !absoluteTarget(text.substring(0, this.#urlEnd - base))) {
      this.#error = {
        status: 400,
        message: "Malformed HTTP request: the request target must be a path or an http(s) URL",
      };
      return undefined;
    }
    if (this.httpMinor === 1 && p.httpMajor === 1 && !headers.some((h) => h[0] === "host")) {
      this.#error = { status: 400, message: "Malformed HTTP request: Host header is required" };
      return undefined;
    }
    const hasBody = chunked || (contentLength ?? 0) > 0;
    if (!hasBody) this.#expectContinue = false;
    this.#phase = "handling";
    return this.#current = new Http1Request(this, {
      method,
      url: text.substring(0, this.#urlEnd - base),
      headers,
      httpMinor: this.httpMinor,
      contentLength: chunked ? undefined : contentLength,
      hasBody,
    });
  }

  /** The next piece of `req`'s body, or null at its end. */
  async nextBodyChunk(req: Http1Request): Promise<Uint8Array | null> {
    if (req !== this.#current) throw new ConnectionClosed("The request is over");
    await this.#sendContinue();
    while (true) {
      if (this.#body.length) {
        const c = this.#body.shift()!;
        this.#bodyBytes -= c.byteLength;
        return c;
      }
      if (this.#bodyDone) return null;
      if (!this.#parse()) {
        this.keepAlive = false;
        throw new MalformedBody(this.#error!.message);
      }
      if (this.#body.length || this.#bodyDone) continue;
      if (this.eof || !(await this.#fillBody())) {
        this.keepAlive = false;
        throw new ConnectionClosed("The client closed the connection inside the request body");
      }
    }
  }

  /** `req`'s whole body if it is all in, else undefined. */
  bodyNow(req: Http1Request, limit: number): Uint8Array | undefined {
    if (req !== this.#current || !this.#bodyDone || this.#expectContinue) return undefined;
    if (this.#bodyBytes > limit) {
      this.keepAlive = false;
      throw new BodyTooLarge(limit);
    }
    const parts = this.#body;
    this.#body = [];
    this.#bodyBytes = 0;
    return parts.length === 1 ? parts[0] : concatBytes(parts);
  }

  /** The whole body of `req`. */
  async readBody(req: Http1Request, limit: number): Promise<Uint8Array<ArrayBuffer>> {
    if (req !== this.#current) throw new ConnectionClosed("The request is over");
    if (!req.hasBody) return new Uint8Array(0);
    if ((req.contentLength ?? 0) > limit) {
      this.keepAlive = false; // its bytes will not be read
      throw new BodyTooLarge(limit);
    }
    // The usual case: the whole body came with the head.
    if (this.#bodyDone && this.#body.length === 1) {
      if (this.#bodyBytes > limit) {
        this.keepAlive = false;
        throw new BodyTooLarge(limit);
      }
      const only = this.#body[0] as Uint8Array<ArrayBuffer>;
      this.#body = [];
      this.#bodyBytes = 0;
      return only;
    }
    const next = () => this.nextBodyChunk(req);
    const chunks = (async function* () {
      for (let c; (c = await next()) !== null;) yield c;
    })();
    try {
      return await (this.#opts.bodyBudget ?? UNBOUNDED_BODIES).readAll(chunks, limit);
    } catch (err) {
      // The rest of its bytes will not be read.
      if (err instanceof BodyTooLarge || err instanceof BodiesBusy) this.keepAlive = false;
      throw err;
    }
  }

  #bodyWaitSince = 0;

  async #fillBody(): Promise<boolean> {
    this.#bodyWaitSince = performance.now();
    try {
      return await this.#fill();
    } finally {
      this.#bodyWaitSince = 0;
    }
  }

  async #sendContinue(): Promise<void> {
    if (!this.#expectContinue || this.#continueSent) return;
    this.#continueSent = true;
    await this.write(CONTINUE, CONTINUE.byteLength);
  }

  // ---------------------------------------------------------------- writing

  /**
   * Serializes an answer's head into the output buffer and returns its
   * length; `length` -1: no Content-Length.
   */
  head(
    status: number,
    statusText: string | undefined,
    headers: Iterable<readonly [string, string]>,
    length: number,
    chunked: boolean,
  ): number {
    let s = `HTTP/1.1 ${status} ${statusText || STATUS_CODES[status] || "Unknown"}\r\n`;
    let hasDate = false;
    for (const [k, v] of headers) {
      s += `${k}: ${v}\r\n`;
      if (k === "date") hasDate = true;
    }
    if (!hasDate) s += `date: ${dateHeader}\r\n`;
    if (length >= 0) s += `content-length: ${length}\r\n`;
    if (chunked) s += "transfer-encoding: chunked\r\n";
    // Answered with more of the request's body to come than is drained: the connection
    // closes after it (said here, not only done).
    const left = this.#current?.contentLength === undefined
      ? Infinity
      : this.#current.contentLength - this.#bodyTotal;
    if (
      this.#headersDone && !this.#bodyDone &&
      // A client that waits for `100 Continue` before its body, answered without one: its
      // body may come now or never, so the connection closes after the answer (`#skipBody`).
      (left > DRAIN_LIMIT || (this.#expectContinue && !this.#continueSent))
    ) this.keepAlive = false;
    if (!this.keepAlive || this.#closing) s += "connection: close\r\n";
    else if (this.httpMinor === 0) s += "connection: keep-alive\r\n";
    s += "\r\n";
    this.#encode(s, 0);
    return s.length;
  }

  #closing = false;

  /** Latin-1 encodes `s` into the output buffer at `at` (grows it when needed). */
  #encode(s: string, at: number): Uint8Array {
    if (at + s.length > this.#out.length) {
      const next = new Uint8Array(Math.max(this.#out.length * 2, at + s.length));
      next.set(this.#out.subarray(0, at));
      this.#out = next;
    }
    latin1Into(s, this.#out, at);
    return this.#out;
  }

  /** Writes the head in the output buffer (`headLen` bytes). */
  writeOut(headLen: number): Promise<void> {
    return this.write(this.#out, headLen);
  }

  /** Writes the head in the output buffer and `body` after it, in one write when small. */
  writeWithBody(headLen: number, body: Uint8Array): Promise<void> {
    const total = headLen + body.byteLength;
    if (total > 64 * 1024) {
      return this.write(this.#out, headLen).then(() => this.write(body, body.byteLength));
    }
    if (total > this.#out.length) {
      const next = new Uint8Array(total);
      next.set(this.#out.subarray(0, headLen));
      this.#out = next;
    }
    this.#out.set(body, headLen);
    return this.write(this.#out, total);
  }

  async writeChunk(chunk: Uint8Array): Promise<void> {
    const size = `${chunk.byteLength.toString(16)}\r\n`;
    const out = this.#encode(size, 0);
    if (size.length + chunk.byteLength + 2 <= this.#out.length) {
      out.set(chunk, size.length);
      out[size.length + chunk.byteLength] = 13;
      out[size.length + chunk.byteLength + 1] = 10;
      return await this.write(out, size.length + chunk.byteLength + 2);
    }
    await this.write(out, size.length);
    await this.write(chunk, chunk.byteLength);
    await this.write(CRLF, 2);
  }

  // Socket writes begun and ended, and since when the one in progress has been stalled (as
  // seen by checkTimeouts: no clock read a write).
  #writesBegun = 0;
  #writesEnded = 0;
  #stalledAt = -1;
  #stalledSince = 0;

  /** Writes `bytes[0, length)`; rejects with ConnectionClosed when the peer is gone. */
  write(bytes: Uint8Array, length: number): Promise<void> {
    if (this.#closed) return Promise.reject(new ConnectionClosed());
    const view = length === bytes.byteLength ? bytes : bytes.subarray(0, length);
    this.#writesBegun++;
    return this.#sock.write(view).then(
      (n) => {
        this.#writesEnded++;
        return n < length ? this.#writeRest(view, n) : undefined;
      },
      () => {
        this.#writesEnded++;
        this.#writeFailed();
      },
    );
  }

  async #writeRest(view: Uint8Array, from: number): Promise<void> {
    try {
      for (let o = from; o < view.byteLength;) {
        this.#writesBegun++;
        try {
          o += await this.#sock.write(view.subarray(o));
        } finally {
          this.#writesEnded++;
        }
      }
    } catch {
      this.#writeFailed();
    }
  }

  #writeFailed(): never {
    this.close();
    throw new ConnectionClosed();
  }

  // ---------------------------------------------------------------- lifecycle

  async serve(): Promise<void> {
    const pump = this.#pump();
    try {
      while (!this.#closed) {
        this.#phase = "idle";
        this.#headersDone = this.#bodyDone = false;
        this.#since = performance.now();
        let req = this.#nextHead();
        while (req === null) {
          await this.#moreData();
          req = this.#nextHead();
        }
        if (!req) {
          if (this.#error) await this.#answerError();
          break;
        }
        const res = new Http1Response(this, req.method === "HEAD");
        try {
          const handled = this.#opts.handler(req, res);
          if (handled) await handled;
          if (!res.finished) {
            // The caller went away (end of its input, or a failed write): nothing to answer.
            if (this.eof || this.#closed) break;
            throw new Error("The handler returned before answering");
          }
        } catch (err) {
          // The caller gone (closed, or its input ended: taken for gone), what failed with it is
          // its going (a worker's request broken off), nothing to report.
          if (err instanceof ConnectionClosed || this.#closed || this.eof) break;
          this.#opts.onError?.(err);
          if (res.headersSent) break; // cannot answer twice: cut the connection
          this.keepAlive = false;
          const e = err instanceof InferxError
            ? err
            : new InferxError("internal", "Internal error");
          await res.send(httpStatus(e.code), JSON_TYPE, JSON.stringify(errorBody(e))).catch(
            () => {},
          );
          break;
        } finally {
          this.#current = undefined;
        }
        if (!this.keepAlive || this.#closing || this.eof) break;
        if (!this.#bodyDone && !(await this.#skipBody())) break;
      }
    } catch {
      // a broken connection: nothing more to do on it
    } finally {
      if (!this.#closed && !this.eof && this.#headersDone && !this.#bodyDone) await this.#linger();
      this.close();
      await pump;
      this.#parser.free();
    }
  }

  /**
   * Answered before the request's body was read: the client may still be
   * sending it. Its bytes are read and dropped for a while (as nginx's
   * lingering close), so that it reads the answer rather than a reset.
   */
  async #linger(): Promise<void> {
    try {
      await this.#sock.closeWrite();
    } catch {
      return;
    }
    const until = performance.now() + LINGER_MS;
    while (!this.eof && !this.#closed && performance.now() < until) {
      this.#start = this.#end; // dropped
      this.#wakeRoom();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const more = await Promise.race([
        new Promise<boolean>((r) => this.#dataWaiter = () => r(true)),
        new Promise<boolean>((r) => timer = setTimeout(r, LINGER_IDLE_MS, false)),
      ]);
      clearTimeout(timer);
      if (!more) break;
    }
  }

  /** Reads and drops what is left of the last request's body; false: close instead. */
  async #skipBody(): Promise<boolean> {
    let dropped = 0;
    while (!this.#bodyDone && this.#phase !== "idle") {
      this.#body = [];
      if (this.#bodyBytes > DRAIN_LIMIT) return false;
      if (!this.#parse()) return false;
      dropped += this.#bodyBytes;
      this.#bodyBytes = 0;
      if (dropped > DRAIN_LIMIT) return false;
      if (this.#bodyDone) break;
      if (this.#expectContinue && !this.#continueSent) return false; // the client waits for us
      if (!(await this.#fillBody())) return false;
    }
    this.#body = [];
    this.#bodyBytes = 0;
    return true;
  }

  async #answerError(): Promise<void> {
    const e = this.#error!;
    this.keepAlive = false;
    const res = new Http1Response(this, false);
    const code = e.status === 400 ? "invalid" : e.status === 408 ? "timeout" : "too_large";
    const body = JSON.stringify({
      error: {
        code: e.status === 405
          ? "method_not_allowed"
          : e.status === 501 || e.status === 505
          ? "unsupported"
          : code,
        message: e.message,
      },
    });
    await res.send(e.status, JSON_TYPE, body).catch(() => {});
  }

  /**
   * Closes on timeouts: a head taking too long (408), a keep-alive connection
   * idle too long, a request body stalled, a write the client takes nothing
   * of.
   */
  checkTimeouts(now: number): void {
    if (this.#closed) return;
    if (this.#writesBegun === this.#writesEnded) this.#stalledAt = -1;
    else if (this.#stalledAt !== this.#writesEnded) {
      // A write is pending and none has ended since the last look: it stalls from now.
      this.#stalledAt = this.#writesEnded;
      this.#stalledSince = now;
    } else if (now - this.#stalledSince > this.#limits.sendTimeoutMs) {
      return this.close(); // the pending write fails with ConnectionClosed
    }
    if (this.#phase === "idle" && this.#start === this.#end) {
      if (now - this.#since > this.#limits.keepAliveTimeoutMs) this.close();
    } else if (this.#phase === "head" || this.#phase === "idle") {
      if (now - this.#since > this.#limits.headersTimeoutMs) {
        this.#error = { status: 408, message: "Request head not received in time" };
        this.#answerError().finally(() => this.close());
      }
    } else if (this.#bodyWaitSince && now - this.#bodyWaitSince > this.#limits.bodyTimeoutMs) {
      this.close(); // the handler's read fails with ConnectionClosed
    }
  }

  /** For shutdown: the request being served, or the next one, is the last. */
  closeAfterRequest(): void {
    this.#closing = true;
  }

  /** For shutdown: closes now unless a request is being served (then after it). */
  closeIfIdle(): void {
    this.#closing = true;
    if (this.#phase !== "handling") this.close();
  }

  /** Closes the connection; `stopped`: by the server's shutdown, its grace run out. */
  close(stopped = false): void {
    if (this.#closed) return;
    this.#closed = true;
    this.stopped = stopped;
    this.eof = true;
    // The caller is gone for the request being handled too (a failed write, a send or body
    // timeout): it hears so now, as when its end of the connection closes. Its read loop
    // would say it too late, after `serve()` has let go of the request.
    if (this.#current && this.#phase === "handling") this.#current.fireAbort();
    try {
      this.#sock.close();
    } catch {
      // already closed
    }
    this.#notify();
    const w = this.#roomWaiter;
    this.#roomWaiter = undefined;
    w?.();
  }
}

/** A character of a token (RFC 9110 §5.6.2): what a method is made of. */
const TCHAR = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]$/;
const CONTINUE = new TextEncoder().encode("HTTP/1.1 100 Continue\r\n\r\n");
const CRLF = new Uint8Array([13, 10]);
const JSON_TYPE: [string, string][] = [["content-type", "application/json"]];
