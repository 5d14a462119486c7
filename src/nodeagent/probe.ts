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
    let got: Uint8Array = new Uint8Array(0);
    let total = 0;
    const buf = new Uint8Array(16 * 1024);
    let answer: ProbeAnswer | undefined;
    while (!(answer = whole(got, total))) {
      const n = await conn.read(buf);
      if (n === null) break;
      total += n;
      if (got.length < ANSWER_MAX) got = concat([got, buf.subarray(0, n)]);
    }
    if (answer) return answer;
    const text = new TextDecoder().decode(got);
    const m = text.match(/^HTTP\/1\.[01] (\d{3})/);
    if (!m) throw new Error(`Not an HTTP answer from ${host}:${port}${path}`);
    const split = text.indexOf("\r\n\r\n");
    return { status: Number(m[1]), body: split < 0 ? "" : text.slice(split + 4) };
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

/**
 * The answer whose first bytes are `got` (of `total` read) once it is whole
 * by its framing: its head, and a body of its `content-length`, or chunked to
 * its last chunk, or none (1xx, 204, 304); undefined while more must come
 * (or only the close ends it: a chunked body past what is kept).
 */
function whole(got: Uint8Array, total: number): ProbeAnswer | undefined {
  const end = findHeadEnd(got);
  if (end < 0) return undefined;
  const head = new TextDecoder().decode(got.subarray(0, end));
  const m = head.match(/^HTTP\/1\.[01] (\d{3})/);
  if (!m) return undefined; // said when the connection ends
  const status = Number(m[1]);
  const rest = got.subarray(end + 4);
  if (status < 200 || status === 204 || status === 304) return { status, body: "" };
  const field = (name: string) =>
    head.match(new RegExp(`\\r\\n${name}[ \\t]*:[ \\t]*([^\\r]*)`, "i"))?.[1].trim();
  if (/chunked/i.test(field("transfer-encoding") ?? "")) {
    const body = total > got.length ? undefined : dechunk(rest);
    return body === undefined ? undefined : { status, body: new TextDecoder().decode(body) };
  }
  const length = field("content-length");
  if (length === undefined || !/^\d+$/.test(length)) return undefined; // to its close
  if (total - (end + 4) < Number(length)) return undefined;
  return { status, body: new TextDecoder().decode(rest.subarray(0, Number(length))) };
}

function findHeadEnd(b: Uint8Array): number {
  for (let i = 0; i + 3 < b.length; i++) {
    if (b[i] === 13 && b[i + 1] === 10 && b[i + 2] === 13 && b[i + 3] === 10) return i;
  }
  return -1;
}

/** A chunked body's data once its last chunk came, else undefined. */
function dechunk(b: Uint8Array): Uint8Array | undefined {
  const parts: Uint8Array[] = [];
  let at = 0;
  while (true) {
    let eol = at;
    while (eol + 1 < b.length && !(b[eol] === 13 && b[eol + 1] === 10)) eol++;
    if (eol + 1 >= b.length) return undefined;
    const size = parseInt(new TextDecoder().decode(b.subarray(at, eol)).split(";")[0], 16);
    if (!Number.isFinite(size)) return undefined;
    if (size === 0) return concat(parts); // trailers, if any, are not waited for
    const from = eol + 2;
    if (b.length < from + size + 2) return undefined;
    parts.push(b.subarray(from, from + size));
    at = from + size + 2;
  }
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
