/**
 * The agent's own HTTP calls to its workers (readiness probes, the sample
 * query that warms a worker before its snapshot): one connection per call,
 * closed after the answer, so a worker holds no connection of the agent's
 * when it is dumped.
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
    const chunks: Uint8Array[] = [];
    const buf = new Uint8Array(16 * 1024);
    while (true) {
      const n = await conn.read(buf);
      if (n === null) break;
      chunks.push(buf.slice(0, n));
    }
    const text = new TextDecoder().decode(concat(chunks));
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
