/**
 * The agent's own HTTP calls to its workers (readiness probes, the sample
 * query that warms a worker before its snapshot): one connection per call,
 * closed after the answer, so a worker holds no connection of the agent's
 * when it is dumped. The answer ends by its framing (`content-length`,
 * chunked) or the connection's close, whichever comes first.
 *
 * @module
 */

/** An answer: status and body text. */
export interface ProbeAnswer {
  status: number;
  body: string;
}

/** Options for {@linkcode httpCall}. */
export interface HttpCallOptions {
  /** @default "GET" */
  method?: string;
  /** A JSON body (sent with `content-type: application/json`). */
  json?: unknown;
  /** @default 5000 */
  timeoutMs?: number;
}

/** One HTTP/1.1 request to `host:port` on a connection of its own. */
export async function httpCall(
  host: string,
  port: number,
  path: string,
  options: HttpCallOptions = {},
): Promise<ProbeAnswer> {
  const timeout = AbortSignal.timeout(options.timeoutMs ?? 5000);
  let conn: Deno.TcpConn;
  try {
    // The time limit holds from the start: an address that never answers a connect
    // (a pod's namespace being torn down, a dropped SYN) must not hold the probe.
    conn = await Deno.connect({ hostname: host, port, signal: timeout });
  } catch (err) {
    if (!timeout.aborted) throw err;
    throw new Error(`No answer from ${host}:${port}${path} within ${options.timeoutMs ?? 5000} ms`);
  }
  const onAbort = () => conn.close();
  timeout.addEventListener("abort", onAbort, { once: true });
  try {
    const body = options.json === undefined
      ? new Uint8Array()
      : new TextEncoder().encode(JSON.stringify(options.json));
    const head = `${options.method ?? "GET"} ${path} HTTP/1.1\r\nhost: ${host}:${port}\r\n` +
      `connection: close\r\ncontent-length: ${body.length}\r\n` +
      (options.json === undefined ? "" : "content-type: application/json\r\n") + "\r\n";
    const req = new Uint8Array(head.length + body.length);
    req.set(new TextEncoder().encode(head));
    req.set(body, head.length);
    let written = 0;
    while (written < req.length) written += await conn.write(req.subarray(written));
    // Read until the answer is whole by its framing (a worker that keeps the connection open
    // despite `connection: close` still answers) or its close: a sample query's answer is read
    // to its end (its worker done with it before a snapshot), its first ANSWER_MAX bytes kept.
    const answer = new AnswerReader();
    const buf = new Uint8Array(16 * 1024);
    while (true) {
      const n = await conn.read(buf);
      if (n === null) break;
      let whole;
      try {
        whole = answer.push(buf.subarray(0, n));
      } catch (err) {
        throw new Error(`${(err as Error).message} from ${host}:${port}${path}`);
      }
      if (whole) return whole;
    }
    const closed = answer.closed();
    if (!closed) throw new Error(`Not an HTTP answer from ${host}:${port}${path}`);
    return closed;
  } catch (err) {
    if (timeout.aborted) {
      throw new Error(
        `No answer from ${host}:${port}${path} within ${options.timeoutMs ?? 5000} ms`,
      );
    }
    throw err;
  } finally {
    timeout.removeEventListener("abort", onAbort);
    try {
      conn.close();
    } catch {
      // closed by the timeout
    }
  }
}

/** The most of an answer kept: a probe needs its status, the sample query its success. */
const ANSWER_MAX = 1024 * 1024;
/** The most of an answer's head read before it must have ended. */
const HEAD_MAX = 64 * 1024;

/**
 * An answer read as it comes: its head, then its body by its framing
 * (`content-length`, chunked, none for 1xx/204/304, else to the close),
 * followed to its end whatever its size, its first {@linkcode ANSWER_MAX}
 * bytes kept.
 */
class AnswerReader {
  #head: Uint8Array = new Uint8Array(0);
  #status = 0;
  /** How the body ends, once the head is read. */
  #framing?: "length" | "chunked" | "close";
  /** Body bytes still to come (`length`), or of the current chunk (`chunked`). */
  #left = 0;
  /** Chunked: reading a size line (its text so far), or the CRLF after a chunk's data. */
  #sizeLine: string | undefined = "";
  #crlf = 0;
  #body: Uint8Array[] = [];
  #kept = 0;

  /** Takes the next bytes; the answer once it is whole. */
  push(bytes: Uint8Array): ProbeAnswer | undefined {
    if (!this.#framing) {
      this.#head = concat([this.#head, bytes]);
      const end = findHeadEnd(this.#head);
      if (end < 0 && this.#head.length > HEAD_MAX) throw new Error("Not an HTTP answer");
      if (end < 0) return undefined;
      const head = new TextDecoder().decode(this.#head.subarray(0, end));
      const m = head.match(/^HTTP\/1\.[01] (\d{3})/);
      if (!m) throw new Error("Not an HTTP answer");
      this.#status = Number(m[1]);
      if (this.#status < 200 || this.#status === 204 || this.#status === 304) return this.#answer();
      const field = (name: string) =>
        head.match(new RegExp(`\\r\\n${name}[ \\t]*:[ \\t]*([^\\r]*)`, "i"))?.[1].trim();
      const length = field("content-length");
      if (/chunked/i.test(field("transfer-encoding") ?? "")) this.#framing = "chunked";
      else if (length !== undefined && /^\d+$/.test(length)) {
        this.#framing = "length";
        this.#left = Number(length);
      } else this.#framing = "close";
      bytes = this.#head.subarray(end + 4);
      this.#head = new Uint8Array(0);
      if (this.#framing === "length" && this.#left === 0) return this.#answer();
    }
    if (this.#framing === "close") return void this.#keep(bytes);
    if (this.#framing === "length") {
      const take = bytes.subarray(0, this.#left);
      this.#keep(take);
      this.#left -= take.length;
      return this.#left === 0 ? this.#answer() : undefined;
    }
    return this.#chunks(bytes) ? this.#answer() : undefined;
  }

  /** The answer when the connection closed: what came, or undefined when no head did. */
  closed(): ProbeAnswer | undefined {
    return this.#framing || this.#status ? this.#answer() : undefined;
  }

  /** Follows chunked framing through `b`; whether the last chunk came. */
  #chunks(b: Uint8Array): boolean {
    let at = 0;
    while (at < b.length) {
      if (this.#crlf > 0) {
        const skip = Math.min(this.#crlf, b.length - at);
        this.#crlf -= skip;
        at += skip;
        if (this.#crlf === 0) this.#sizeLine = "";
      } else if (this.#sizeLine !== undefined) {
        const nl = b.indexOf(10, at);
        const upTo = nl < 0 ? b.length : nl;
        this.#sizeLine += new TextDecoder().decode(b.subarray(at, upTo));
        if (this.#sizeLine.length > 1024) throw new Error("Not an HTTP answer: a chunk size line");
        at = upTo;
        if (nl < 0) break;
        at++;
        const hex = this.#sizeLine.split(";")[0].trim();
        // Hex digits alone (a "-1" would leave the loop reading nothing for ever).
        if (!/^[0-9a-fA-F]{1,12}$/.test(hex)) throw new Error("Not an HTTP answer: a chunk size");
        const size = parseInt(hex, 16);
        if (size === 0) return true; // trailers, if any, are not waited for
        this.#left = size;
        this.#sizeLine = undefined;
      } else {
        const take = b.subarray(at, at + this.#left);
        this.#keep(take);
        this.#left -= take.length;
        at += take.length;
        if (this.#left === 0) this.#crlf = 2;
      }
    }
    return false;
  }

  #keep(b: Uint8Array): void {
    if (this.#kept >= ANSWER_MAX || !b.length) return;
    const take = b.subarray(0, ANSWER_MAX - this.#kept);
    this.#body.push(take.slice());
    this.#kept += take.length;
  }

  #answer(): ProbeAnswer {
    return { status: this.#status, body: new TextDecoder().decode(concat(this.#body)) };
  }
}

function findHeadEnd(b: Uint8Array): number {
  for (let i = 0; i + 3 < b.length; i++) {
    if (b[i] === 13 && b[i + 1] === 10 && b[i + 2] === 13 && b[i + 3] === 10) return i;
  }
  return -1;
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let o = 0;
  for (const c of chunks) (out.set(c, o), o += c.length);
  return out;
}

/** Waits until `host:port{path}` answers 2xx, `died` settles, or `timeoutMs` passes. */
export async function waitForProbe(
  host: string,
  port: number,
  path: string,
  died: Promise<string>,
  options: { timeoutMs: number; intervalMs?: number },
): Promise<void> {
  let dead: string | undefined;
  died.then((why) => dead = why);
  const deadline = Date.now() + options.timeoutMs;
  while (true) {
    if (dead !== undefined) throw new Error(`worker exited before it was ready (${dead})`);
    try {
      const res = await httpCall(host, port, path, { timeoutMs: 1000 });
      if (res.status >= 200 && res.status < 300) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      throw new Error(
        `worker did not answer http://${host}:${port}${path} within ${options.timeoutMs} ms` +
          " (a worker must listen on $HOST:$PORT; one bound to 127.0.0.1 is unreachable in its pod's network)",
      );
    }
    await new Promise((r) => setTimeout(r, options.intervalMs ?? 25));
  }
}
