// The dashboard's link to the gateway: the tab's credential (session storage
// only), JSON API calls that carry it, and the messages the API answers with.

const KEY = "inferx.credential";

/** The credential kept for this tab, or "". */
export function credential() {
  return sessionStorage.getItem(KEY) ?? "";
}

/** Keeps `value` as the tab's credential ("" forgets it). */
export function setCredential(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

/**
 * `key` as an example's copy puts it where `quote` says: in a shell's double
 * quotes (`sh`) or a Python string (`py`); the placeholder without one.
 */
export function keyForExample(key, quote) {
  if (!key) return "$INFERX_APIKEY";
  return key.replace(quote === "py" ? /[\\"]/g : /[\\"$`]/g, "\\$&");
}

/** A credential as examples show it: its first characters, then dots. */
export function masked(value) {
  if (!value) return "$INFERX_APIKEY";
  return `${value.slice(0, Math.min(8, Math.floor(value.length / 3)))}••••••••`;
}

/**
 * `url` when it names a part of this dashboard (`/ui/part/...` on this
 * origin, after resolving `..` and escapes), else undefined: what is loaded
 * into a page as HTML is never anything else, whatever a link carried.
 */
export function partUrl(url, origin) {
  let u;
  try {
    u = new URL(url, origin);
  } catch {
    return undefined;
  }
  if (u.origin !== origin || !u.pathname.startsWith("/ui/part/")) return undefined;
  // An escaped slash or dot would be read as one by the server's router.
  if (/%2f|%2e|%5c/i.test(u.pathname)) return undefined;
  return u.pathname + u.search;
}

/**
 * The URL of a call of function `func` (`tenant/namespace/name`) at `path`,
 * or undefined when `path` would take it anywhere else (`..`, escaped dots
 * or slashes): the playground's path comes from the function's spec, which
 * its tenant writes, and the call carries the viewer's credential.
 */
export function callUrl(func, path, origin) {
  const base = `/funccall/${func}/`;
  let u;
  try {
    u = new URL(`${base}${path}`, origin);
  } catch {
    return undefined;
  }
  if (u.origin !== origin || !u.pathname.startsWith(base)) return undefined;
  if (/%2f|%2e|%5c/i.test(u.pathname)) return undefined;
  return u.pathname + u.search;
}

/**
 * Why `value` cannot be a credential, or undefined when it can: a header
 * carries Latin-1 only (the dashboard's own masked display has `•`).
 */
export function credentialProblem(value) {
  if (!value) return "Enter an API key or token";
  if (/[^\x20-\x7e]/.test(value)) {
    return "That is not a credential: it holds characters a key never has (a masked key's dots?)";
  }
  return undefined;
}

/** `fetch` with the tab's credential (a promise, also when the request cannot be made). */
export function api(path, init = {}) {
  try {
    const headers = new Headers(init.headers);
    const cred = credential();
    if (cred) headers.set("authorization", `Bearer ${cred}`);
    return fetch(path, { ...init, headers });
  } catch (err) {
    return Promise.reject(err);
  }
}

/** An answer that is not 2xx, with the API's own message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The message of a failed answer: the API's `error.message`, else its text. */
export async function messageOf(res) {
  const text = await res.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    const m = body?.error?.message ?? body?.error ?? body?.message;
    if (typeof m === "string" && m) return m;
  } catch {
    // not JSON
  }
  return text.trim() || `${res.status} ${res.statusText}`;
}

/** Calls the JSON API; resolves to the parsed body, or throws {@link ApiError}. */
export async function apiJson(path, init = {}) {
  const res = await api(path, init);
  if (!res.ok) throw new ApiError(res.status, await messageOf(res));
  return res.status === 204 ? null : await res.json();
}

let flashTimer;

/** Shows `message` in the banner under the header (`kind`: error or info). */
export function flash(message, kind = "error") {
  const el = document.getElementById("flash");
  el.textContent = message;
  el.className = `flash flash-${kind}`;
  el.hidden = false;
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => el.hidden = true, kind === "error" ? 12_000 : 4_000);
}

/** Takes the banner down: what it said no longer holds (the form it was about went through). */
export function clearFlash() {
  clearTimeout(flashTimer);
  const el = document.getElementById("flash");
  if (el) el.hidden = true;
}
