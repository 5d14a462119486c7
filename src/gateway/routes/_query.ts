/**
 * Reading query parameters for the management routes, with a clear 400 for
 * bad ones.
 *
 * @module
 */
import { ValidationError } from "../../common/errors.ts";

/**
 * Query parameter `field` as an integer from `min` to `max`, written in
 * decimal digits (no sign, exponent, hexadecimal or empty value, which
 * `Number()` would read); undefined when absent.
 */
export function intParam(
  raw: string | undefined,
  field: string,
  min: number,
  max: number,
): number | undefined {
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (!/^\d{1,16}$/.test(raw) || n < min || n > max) {
    throw new ValidationError(`Invalid ${field} "${raw}": an integer from ${min} to ${max}`, field);
  }
  return n;
}

/**
 * Refuses a query parameter `what` does not take (`takes`): a misspelt
 * filter would answer everything, unfiltered.
 */
export function knownParams(
  what: string,
  query: Record<string, string | undefined>,
  takes: readonly string[],
): void {
  for (const k of Object.keys(query)) {
    if (takes.includes(k)) continue;
    throw new ValidationError(
      `Invalid ${what}: unknown parameter "${k}" (it takes ${takes.join(", ")})`,
      k,
    );
  }
}

/**
 * The query parameters of `url`, each in `takes` and given once: an unknown
 * one is refused as {@linkcode knownParams} refuses it (on a route that
 * changes something, a misspelt `dryRun` would write and a misspelt
 * `revision` delete unchecked), and so is a repeated one, whose values
 * disagree on what was meant (`?dryRun=0&dryRun=1`).
 */
export function queryOnce(
  what: string,
  url: string,
  takes: readonly string[],
): Record<string, string | undefined> {
  const out: Record<string, string | undefined> = Object.create(null);
  for (const [k, v] of new URL(url).searchParams) {
    if (!takes.includes(k)) {
      throw new ValidationError(
        `Invalid ${what}: unknown parameter "${k}" (${
          takes.length ? `it takes ${takes.join(", ")}` : "it takes none"
        })`,
        k,
      );
    }
    if (out[k] !== undefined) {
      throw new ValidationError(`Invalid ${what}: parameter "${k}" given more than once`, k);
    }
    out[k] = v;
  }
  return out;
}

/**
 * The query parameters of request `req` to a route that changes something
 * and takes no body, as {@linkcode queryOnce} reads them; a body is refused:
 * a guard sent there (`{"revision": 3}`, `{"version": 2}`) would be ignored,
 * and what it guarded done unchecked.
 */
export function queryOnly(
  what: string,
  req: Request,
  takes: readonly string[],
): Record<string, string | undefined> {
  const query = queryOnce(what, req.url, takes);
  // The listener gives a request a body when it has one (a length above 0, or chunked).
  if (req.body !== null) {
    throw new ValidationError(
      `Invalid ${what}: it takes no body (${
        takes.length ? `its parameters go in the query: ${takes.join(", ")}` : "nor parameters"
      })`,
    );
  }
  return query;
}
