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
