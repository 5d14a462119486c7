/**
 * The agent's own HTTP calls to its workers (readiness probes, the sample
 * query that warms a worker before its snapshot): one connection per call,
 * closed after the answer, so a worker holds no connection of the agent's
 * when it is dumped. The answer ends by its framing (`content-length`,
 * chunked) or the connection's close, whichever comes first.
 *
 * @module
 */

import { EV, HPE, Http1Parser } from "../common/llhttp.ts";

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
    throw new Error(`No answer to ${path} within ${options.timeoutMs ?? 5000} ms`);
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
    try {
      const buf = new Uint8Array(16 * 1024);
      while (true) {
        const n = await conn.read(buf);
        if (n === null) break;
        let whole;
        try {
          whole = answer.push(buf.subarray(0, n));
        } catch (err) {
          throw new Error(`${(err as Error).message} (the answer to ${path})`);
        }
        if (whole) return whole;
      }
      const closed = answer.closed();
      if (!closed) throw new Error(`Not an HTTP answer to ${path}`);
      return closed;
    } finally {
      answer.free();
    }
  } catch (err) {
    if (timeout.aborted) {
      throw new Error(`No answer to ${path} within ${options.timeoutMs ?? 5000} ms`);
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
 * An answer read as it comes, framed by llhttp (strict, as the gateway's
 * pool reads workers): its head, then its body by its framing
 * (`content-length`, chunked, none, or to the close), followed to its end
 * whatever its size, its first {@linkcode ANSWER_MAX} bytes kept.
 */
class AnswerReader {
  #parser = new Http1Parser("response");
  #body: Uint8Array[] = [];
  #kept = 0;
  #status = 0;

  /** Takes the next bytes; the answer once it is whole. Throws on what is not HTTP. */
  push(bytes: Uint8Array): ProbeAnswer | undefined {
    for (let at = 0; at < bytes.length;) {
      const error = this.#parser.execute(bytes, at, bytes.length);
      if (this.#events(bytes)) return this.#answer();
      if (error !== HPE.OK) throw new Error(`Not an HTTP answer (${this.#parser.errorReason})`);
      at += this.#parser.consumed;
    }
    return undefined;
  }

  /** The answer when the connection closed: what came, or undefined when no head did. */
  closed(): ProbeAnswer | undefined {
    this.#parser.finish();
    return this.#status ? this.#answer() : undefined;
  }

  /** Keeps the status and body the last execute found; whether the message ended. */
  #events(bytes: Uint8Array): boolean {
    const p = this.#parser;
    for (let i = 0; i < p.eventCount; i += 3) {
      const [kind, at, len] = [p.events[i], p.events[i + 1], p.events[i + 2]];
      if (kind === EV.HEADERS_COMPLETE) this.#status = p.statusCode;
      else if (kind === EV.BODY && this.#kept < ANSWER_MAX) {
        const take = bytes.subarray(at, at + Math.min(len, ANSWER_MAX - this.#kept));
        this.#body.push(take.slice());
        this.#kept += take.length;
      } else if (kind === EV.MESSAGE_COMPLETE) return true;
    }
    return false;
  }

  /** Gives the parser back (once read, or given up). */
  free(): void {
    this.#parser.free();
  }

  #answer(): ProbeAnswer {
    return { status: this.#status, body: new TextDecoder().decode(concat(this.#body)) };
  }
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let o = 0;
  for (const c of chunks) (out.set(c, o), o += c.length);
  return out;
}

/**
 * How often a worker is probed while it starts: every
 * {@linkcode PROBE_FIRST_MS} for its first {@linkcode PROBE_FIRST_FOR_MS}
 * (a worker that comes up that soon, say a small server, is found within
 * about 2 ms: Deno's timers fire 1–2 ms after they are due), every
 * {@linkcode PROBE_FAST_MS} until {@linkcode PROBE_FAST_FOR_MS}, then every
 * {@linkcode PROBE_SLOW_MS}. A start is found late by half the wait on
 * average. A probe of a worker not listening yet is one refused connect: at
 * most about 120 in the first quarter second, 200 a second after; one that
 * listens early and answers other than 2xx while it loads gets as many
 * requests.
 */
export const PROBE_FIRST_MS = 1;
export const PROBE_FIRST_FOR_MS = 250;
export const PROBE_FAST_MS = 5;
export const PROBE_FAST_FOR_MS = 3000;
export const PROBE_SLOW_MS = 25;

/** The wait before the next probe of a worker that started `elapsedMs` ago. */
export function probeInterval(elapsedMs: number): number {
  return elapsedMs < PROBE_FIRST_FOR_MS
    ? PROBE_FIRST_MS
    : elapsedMs < PROBE_FAST_FOR_MS
    ? PROBE_FAST_MS
    : PROBE_SLOW_MS;
}

/**
 * Waits until `host:port{path}` answers 2xx, `died` settles, or `timeoutMs`
 * passes. Its errors name the path, not the address: they reach the callers
 * of a function whose worker failed to start, and the address is the cluster's.
 */
export async function waitForProbe(
  host: string,
  port: number,
  path: string,
  died: Promise<string>,
  options: {
    timeoutMs: number;
    /** A fixed interval between probes. @default fast, then slow (see {@linkcode PROBE_FAST_MS}) */
    intervalMs?: number;
    /** The worker's network is its own (a pod's namespace, a container's): 127.0.0.1 is its own. */
    ownNetwork?: "pod" | "container";
  },
): Promise<void> {
  let dead: string | undefined;
  died.then((why) => dead = why);
  const started = Date.now();
  const deadline = started + options.timeoutMs;
  let lastStatus: number | undefined;
  while (true) {
    if (dead !== undefined) throw new Error(`worker exited before it was ready (${dead})`);
    try {
      const res = await httpCall(host, port, path, { timeoutMs: 1000 });
      if (res.status >= 200 && res.status < 300) return;
      lastStatus = res.status;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      const within = `within ${options.timeoutMs} ms`;
      if (lastStatus !== undefined) {
        throw new Error(
          `worker did not answer its probe, GET ${path}, with a 2xx ${within} (its last answer: ${lastStatus})`,
        );
      }
      const hint = options.ownNetwork
        ? `; one bound to 127.0.0.1 is unreachable in its ${options.ownNetwork}'s network`
        : "";
      throw new Error(
        `worker did not answer its probe, GET ${path} on its $PORT, ${within}` +
          ` (a worker must listen on $HOST:$PORT${hint})`,
      );
    }
    const interval = options.intervalMs ?? probeInterval(Date.now() - started);
    await new Promise((r) => setTimeout(r, interval));
  }
}
