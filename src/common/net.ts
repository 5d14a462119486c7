/**
 * Small network helpers shared by the runtimes, the test harnesses and the
 * benchmarks: a free port to listen on, waiting for an HTTP probe, and
 * telling a URL path that reads two ways.
 *
 * @module
 */
import { InferxError } from "./errors.ts";

/**
 * Runs `listen` (a listener's start on `host:port`, for `what`), turning its
 * failure into one that says where: the runtime's own ("Address already in
 * use") names neither the address nor the setting.
 */
export function listening<T>(what: string, host: string, port: number, listen: () => T): T {
  const refused = (err: unknown) =>
    new InferxError(
      "unavailable",
      `Cannot listen on ${hostPort(host, port)} (${what}): ${(err as Error).message}`,
      { cause: err },
    );
  try {
    const r = listen();
    // A listener started asynchronously (a gRPC server's bind): its refusal named alike.
    if (r instanceof Promise) return r.catch((err) => Promise.reject(refused(err))) as T;
    return r;
  } catch (err) {
    throw refused(err);
  }
}

/** `host:port`, an IPv6 address in brackets (`[::1]:4000`), as URLs and gRPC take them. */
export function hostPort(host: string, port: number | string): string {
  return host.includes(":") && !host.startsWith("[") ? `[${host}]:${port}` : `${host}:${port}`;
}

/** The first port the kernel hands out as a connection's own (Linux's range), or undefined. */
function ephemeralLow(): number | undefined {
  try {
    const lo = Number(
      Deno.readTextFileSync("/proc/sys/net/ipv4/ip_local_port_range").split(/\s+/)[0],
    );
    return Number.isInteger(lo) ? lo : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Finds a free TCP port on `host` for a listener started later (by another
 * process, say): one below the kernel's range of ports for connections' own
 * ends where it can, since a port of that range, free when found, can be
 * taken by any connection made meanwhile and held as long as it lasts (a
 * restarted role then cannot listen on it again).
 */
export function freePort(host = "127.0.0.1"): number {
  const lo = ephemeralLow();
  for (let i = 0; lo !== undefined && lo > 12_000 && i < 50; i++) {
    const port = 10_000 + Math.floor(Math.random() * (lo - 10_000));
    if (FETCH_BLOCKED_PORTS.has(port)) continue;
    try {
      Deno.listen({ hostname: host, port }).close();
      return port;
    } catch {
      // taken: another
    }
  }
  for (;;) {
    const l = Deno.listen({ hostname: host, port: 0 });
    const port = (l.addr as Deno.NetAddr).port;
    l.close();
    if (!FETCH_BLOCKED_PORTS.has(port)) return port;
  }
}

/**
 * The ports above 1023 that `fetch` refuses to send to (the Fetch standard's "bad ports"; a
 * browser's too): a listener there cannot be called by `fetch`, so {@linkcode freePort} passes them
 * over (10080 in its range made a test's platform, up and listening, never found ready).
 */
export const FETCH_BLOCKED_PORTS: ReadonlySet<number> = new Set([
  1719,
  1720,
  1723,
  2049,
  3659,
  4045,
  4190,
  5060,
  5061,
  6000,
  6566,
  6665,
  6666,
  6667,
  6668,
  6669,
  6679,
  6697,
  10080,
]);

/** The host and port of an endpoint `host:port` (as pods' endpoints are written). */
export function splitEndpoint(endpoint: string): { hostname: string; port: number } {
  const colon = endpoint.lastIndexOf(":");
  return { hostname: endpoint.slice(0, colon), port: Number(endpoint.slice(colon + 1)) };
}

/**
 * Whether a request target's path reads otherwise to a URL parser than to a
 * split on "/": a `.` or `..` segment, percent-encoded (`%2e`) or not, a
 * backslash (a URL takes it for "/") or a `#` (a URL ends the path there).
 */
export function ambiguousPath(path: string): boolean {
  if (path.includes("\\") || path.includes("#")) return true;
  if (!path.includes("/.") && !path.includes("%")) return false;
  for (const seg of path.split("/")) {
    if (seg === "" || seg.length > 6) continue;
    const s = seg.replace(/%2e/gi, ".");
    if (s === "." || s === "..") return true;
  }
  return false;
}
