/**
 * What keeps web pages out of a gateway that runs without auth (every
 * caller is its administrator). A page a browser on the machine opens can
 * send the gateway requests; two kinds would act for the page's site:
 *
 * - **DNS rebinding**: a name of the page's site made to resolve to
 *   127.0.0.1, so that the browser takes the gateway for that site and lets
 *   the page read its answers (a key it made, say). Such requests carry the
 *   site's name in `Host`: a gateway bound to a loopback address answers only
 *   requests addressed to a loopback name or address.
 * - **Cross-site writes**: a form or a `fetch` of the page's own kind
 *   (`text/plain`, no preflight) sent to `http://127.0.0.1:4000/apikeys`.
 *   Browsers say where such a request comes from in `Origin`: a request that
 *   may change something (any method but GET, HEAD and OPTIONS) from another
 *   origin than the one it is addressed to is refused.
 *
 * Clients that are not browsers (curl, SDKs, the command line) send no
 * `Origin`, and address the gateway by the name they reach it by.
 *
 * @module
 */

/** Whether `host` (a name or address, without port) is this machine's loopback. */
function loopbackHost(host: string): boolean {
  const h = host.toLowerCase().replace(/\.$/, ""); // a name may end in its root's dot
  return h === "localhost" || h.endsWith(".localhost") || h === "[::1]" || h === "::1" ||
    /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/** The host of a `Host` field's value, without its port. */
function hostOf(value: string): string {
  if (value.startsWith("[")) return value.slice(0, value.indexOf("]") + 1);
  const colon = value.indexOf(":");
  return colon < 0 ? value : value.slice(0, colon);
}

const SAFE = new Set(["GET", "HEAD", "OPTIONS"]);

/**
 * A check of each request for a gateway without auth bound to `hostname`:
 * why a request is refused, or undefined when it is not.
 */
export function localOnly(
  hostname: string,
): (method: string, host: string | undefined, origin: string | undefined) => string | undefined {
  const loopback = loopbackHost(hostname);
  return (method, host, origin) => {
    // Any other Host, malformed ones included (browsers take names that are no DNS names).
    if (loopback && host !== undefined && !loopbackHost(hostOf(host))) {
      return `Host ${JSON.stringify(host.slice(0, 100))} refused: without auth the gateway ` +
        `answers only requests addressed to this machine's loopback (127.0.0.1, localhost), ` +
        `which a web page's own name can be made to resolve to; set INFERX_ADMIN_APIKEY to turn ` +
        `auth on`;
    }
    if (origin === undefined || SAFE.has(method)) return undefined;
    let from: string;
    try {
      from = new URL(origin).host;
    } catch {
      from = origin; // "null": a sandboxed page, a file
    }
    if (host !== undefined && from === host.toLowerCase()) return undefined;
    return `A ${method} from ${JSON.stringify(origin.slice(0, 100))} refused: without auth ` +
      `the gateway takes no requests that may change something from web pages of other sites; ` +
      `set INFERX_ADMIN_APIKEY to turn auth on`;
  };
}
