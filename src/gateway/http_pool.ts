/**
 * A keep-alive HTTP/1.1 client for the gateway's upstream calls, on
 * `Deno.connect` with TCP_NODELAY: a pool of idle connections per worker,
 * the request head and a known-length body in one write, streamed bodies
 * sent chunked, response bodies streamed back (content-length, chunked, or
 * until close). A reused connection that turns out closed before any answer
 * is retried once on a fresh one. Idle connections are closed after an idle
 * timeout, so a worker that went away (scale to zero) leaves nothing open.
 * Measured against `fetch()` in `bench/gateway.ts`.
 *
 * @module
 */

const enc = new TextEncoder();
const dec = new TextDecoder();
const CRLF2 = [13, 10, 13, 10];
const MAX_HEAD = 64 * 1024;
const IDLE_PER_ENDPOINT = 64;
/** Sized answers up to this are read whole rather than streamed. */
const BUFFER_LIMIT = 1024 * 1024;

/** The connection was refused or broke before an answer arrived. */
export class ConnectError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ConnectError";
  }
}

class Conn {
  readonly socket: Deno.TcpConn;
  #buf = new Uint8Array(16 * 1024);
  #start = 0;
  #end = 0;
  closed = false;
  /** When it went back to the pool (`performance.now()`). */
  idleSince = 0;

  constructor(socket: Deno.TcpConn) {
    this.socket = socket;
  }

  get buffered(): number {
    return this.#end - this.#start;
  }

  /** Reads more from the socket into the buffer; false at end of stream. */
  async fill(): Promise<boolean> {
    if (this.#start > 0 && this.#start === this.#end) this.#start = this.#end = 0;
    if (this.#end === this.#buf.length) {
      const size = this.buffered;
      const next = new Uint8Array(Math.max(this.#buf.length, size * 2));
      next.set(this.#buf.subarray(this.#start, this.#end));
      this.#buf = next;
      this.#start = 0;
      this.#end = size;
    }
    const n = await this.socket.read(this.#buf.subarray(this.#end));
    if (n === null) return false;
    this.#end += n;
    return true;
  }

  /** Index of CRLFCRLF in the buffer, or -1. */
  #headEnd(): number {
    const b = this.#buf;
    for (let i = this.#start; i + 3 < this.#end; i++) {
      if (
        b[i] === CRLF2[0] && b[i + 1] === CRLF2[1] && b[i + 2] === CRLF2[2] && b[i + 3] === CRLF2[3]
      ) return i;
    }
    return -1;
  }

  /** Reads the response head; undefined when the peer closed before sending anything. */
  async readHead(): Promise<{ status: number; statusText: string; headers: Headers } | undefined> {
    let end: number;
    while ((end = this.#headEnd()) < 0) {
      if (this.buffered > MAX_HEAD) throw new Error("upstream response head is too large");
      if (!(await this.fill())) {
        if (this.buffered === 0) return undefined;
        throw new Error("upstream closed the connection in the middle of a response head");
      }
    }
    const lines = dec.decode(this.#buf.subarray(this.#start, end)).split("\r\n");
    this.#start = end + 4;
    const m = /^HTTP\/1\.[01] (\d{3}) ?(.*)$/.exec(lines[0]);
    if (!m) throw new Error(`upstream sent a malformed status line: ${lines[0].slice(0, 80)}`);
    const headers = new Headers();
    for (let i = 1; i < lines.length; i++) {
      const colon = lines[i].indexOf(":");
      if (colon > 0) {
        headers.append(lines[i].slice(0, colon).trim(), lines[i].slice(colon + 1).trim());
      }
    }
    return { status: Number(m[1]), statusText: m[2], headers };
  }

  /** Takes up to `max` buffered bytes (reading more when none are buffered); null at end. */
  async take(max: number): Promise<Uint8Array | null> {
    if (this.buffered === 0 && !(await this.fill())) return null;
    const n = Math.min(max, this.buffered);
    const out = this.#buf.slice(this.#start, this.#start + n);
    this.#start += n;
    return out;
  }

  /** Reads one CRLF-terminated line (for chunk sizes). */
  async line(): Promise<string> {
    while (true) {
      const b = this.#buf;
      for (let i = this.#start; i + 1 < this.#end; i++) {
        if (b[i] === 13 && b[i + 1] === 10) {
          const s = dec.decode(b.subarray(this.#start, i));
          this.#start = i + 2;
          return s;
        }
      }
      if (!(await this.fill())) {
        throw new Error("upstream closed the connection inside a chunked body");
      }
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.socket.close();
    } catch {
      // already closed
    }
  }
}

/** Options for {@linkcode HttpPool.request}. */
export interface PoolRequest {
  method: string;
  /** Path and query, e.g. `/v1/completions?x=1`. */
  path: string;
  /** Lowercase names, without hop-by-hop fields. */
  headers: Iterable<[string, string]>;
  body: Uint8Array | ReadableStream<Uint8Array> | null;
}

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
  #idleMs: number;
  #sweptAt = 0;

  constructor(options: HttpPoolOptions = {}) {
    this.#idleMs = options.idleTimeoutMs ?? 4000;
  }

  /** Idle connections held, all workers together. */
  get idleConnections(): number {
    let n = 0;
    for (const conns of this.#idle.values()) n += conns.length;
    return n;
  }

  /**
   * Closes connections idle past the timeout and forgets workers left with
   * none; runs with the requests (at most twice per timeout), no timer.
   */
  #sweep(now: number): void {
    if (now - this.#sweptAt < this.#idleMs / 2) return;
    this.#sweptAt = now;
    for (const [endpoint, conns] of this.#idle) {
      const live = conns.filter((c) => !c.closed && now - c.idleSince <= this.#idleMs);
      for (const c of conns) if (!live.includes(c)) c.close();
      if (live.length) this.#idle.set(endpoint, live);
      else this.#idle.delete(endpoint);
    }
  }

  /** The most recently used idle connection to `endpoint` still within the timeout. */
  #pooled(endpoint: string, now: number): Conn | undefined {
    const conns = this.#idle.get(endpoint);
    let c: Conn | undefined;
    while ((c = conns?.pop()) && now - c.idleSince > this.#idleMs) c.close();
    return c;
  }

  /** Sends one request to `endpoint` (`host:port`) and answers with a streaming Response. */
  async request(endpoint: string, req: PoolRequest): Promise<Response> {
    const replayable = !(req.body instanceof ReadableStream);
    const now = performance.now();
    this.#sweep(now);
    for (let attempt = 0;; attempt++) {
      const pooled = this.#pooled(endpoint, now);
      const conn = pooled ?? await this.#connect(endpoint);
      try {
        await this.#send(conn, endpoint, req);
        const head = await conn.readHead();
        if (!head) throw new ConnectError(`${endpoint} closed the connection before answering`);
        return await this.#response(endpoint, conn, req.method, head);
      } catch (err) {
        conn.close();
        // A kept-alive connection the worker had already closed: try a fresh one once.
        if (pooled && attempt === 0 && replayable) continue;
        if (err instanceof ConnectError) throw err;
        throw new ConnectError(`${endpoint}: ${(err as Error).message}`, { cause: err });
      }
    }
  }

  async #connect(endpoint: string): Promise<Conn> {
    const colon = endpoint.lastIndexOf(":");
    try {
      const socket = await Deno.connect({
        hostname: endpoint.slice(0, colon),
        port: Number(endpoint.slice(colon + 1)),
      });
      socket.setNoDelay(true);
      return new Conn(socket);
    } catch (err) {
      throw new ConnectError(`cannot connect to ${endpoint}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  async #send(conn: Conn, endpoint: string, req: PoolRequest): Promise<void> {
    let head = `${req.method} ${req.path} HTTP/1.1\r\nhost: ${endpoint}\r\n`;
    for (const [k, v] of req.headers) head += `${k}: ${v}\r\n`;
    const body = req.body;
    if (body instanceof ReadableStream) {
      await writeAll(conn.socket, enc.encode(`${head}transfer-encoding: chunked\r\n\r\n`));
      for await (const chunk of body) {
        if (chunk.byteLength === 0) continue;
        await writeAll(
          conn.socket,
          concat(enc.encode(`${chunk.byteLength.toString(16)}\r\n`), chunk, enc.encode("\r\n")),
        );
      }
      await writeAll(conn.socket, enc.encode("0\r\n\r\n"));
      return;
    }
    const bytes = body ?? new Uint8Array(0);
    if (bytes.byteLength || !["GET", "HEAD", "DELETE", "OPTIONS"].includes(req.method)) {
      head += `content-length: ${bytes.byteLength}\r\n`;
    }
    await writeAll(conn.socket, concat(enc.encode(`${head}\r\n`), bytes));
  }

  #response(
    endpoint: string,
    conn: Conn,
    method: string,
    head: { status: number; statusText: string; headers: Headers },
  ): Response | Promise<Response> {
    const h = head.headers;
    const keepAlive = !/\bclose\b/i.test(h.get("connection") ?? "");
    const release = () => {
      if (!keepAlive || conn.closed) return conn.close();
      const idle = this.#idle.get(endpoint) ?? [];
      if (idle.length >= IDLE_PER_ENDPOINT) return conn.close();
      conn.idleSince = performance.now();
      idle.push(conn);
      this.#idle.set(endpoint, idle);
    };
    const noBody = method === "HEAD" || head.status === 204 || head.status === 304 ||
      (head.status >= 100 && head.status < 200);
    const length = h.get("content-length");
    const chunked = /\bchunked\b/i.test(h.get("transfer-encoding") ?? "");
    h.delete("transfer-encoding");
    h.delete("connection");
    h.delete("keep-alive");
    if (noBody || length === "0") {
      release();
      return new Response(null, { status: head.status, statusText: head.statusText, headers: h });
    }
    let left = length === null ? Infinity : Number(length);
    if (!chunked && left <= BUFFER_LIMIT) return this.#buffered(conn, left, head, release);
    let chunkLeft = 0;
    let done = false;
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        try {
          if (chunked) {
            if (chunkLeft === 0) {
              const size = parseInt((await conn.line()).split(";")[0], 16);
              if (Number.isNaN(size)) throw new Error("upstream sent a malformed chunk size");
              if (size === 0) {
                while ((await conn.line()) !== "") { /* trailers */ }
                done = true;
                controller.close();
                return release();
              }
              chunkLeft = size;
            }
            const part = await conn.take(chunkLeft);
            if (!part) throw new Error("upstream closed the connection inside a chunk");
            chunkLeft -= part.byteLength;
            if (chunkLeft === 0) await conn.line(); // the CRLF after the chunk
            controller.enqueue(part);
            return;
          }
          const part = await conn.take(Math.min(left, 64 * 1024));
          if (!part) {
            if (left !== Infinity) {
              throw new Error("upstream closed the connection before the body ended");
            }
            done = true;
            controller.close();
            return conn.close(); // body delimited by close
          }
          left -= part.byteLength;
          controller.enqueue(part);
          if (left === 0) {
            done = true;
            controller.close();
            release();
          }
        } catch (err) {
          conn.close();
          controller.error(err);
        }
      },
      cancel() {
        if (!done) conn.close(); // a half-read body leaves the connection unusable
      },
    });
    return new Response(body, { status: head.status, statusText: head.statusText, headers: h });
  }

  /** A sized answer up to BUFFER_LIMIT: read whole, so the connection goes back at once. */
  async #buffered(
    conn: Conn,
    size: number,
    head: { status: number; statusText: string; headers: Headers },
    release: () => void,
  ): Promise<Response> {
    const out = new Uint8Array(size);
    let o = 0;
    while (o < size) {
      const part = await conn.take(size - o);
      if (!part) {
        conn.close();
        throw new Error("upstream closed the connection before the body ended");
      }
      out.set(part, o);
      o += part.byteLength;
    }
    release();
    return new Response(out, {
      status: head.status,
      statusText: head.statusText,
      headers: head.headers,
    });
  }

  /** Closes every idle connection. */
  close(): void {
    for (const conns of this.#idle.values()) for (const c of conns) c.close();
    this.#idle.clear();
  }
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let o = 0;
  for (const p of parts) (out.set(p, o), o += p.byteLength);
  return out;
}

async function writeAll(socket: Deno.TcpConn, data: Uint8Array): Promise<void> {
  let o = 0;
  while (o < data.byteLength) o += await socket.write(data.subarray(o));
}
