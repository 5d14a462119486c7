/**
 * JSON helpers shared by the roles.
 *
 * @module
 */

/**
 * JSON text with the keys of every object sorted, so that two values equal
 * as data give the same text whatever order their keys were written in.
 * Array order is kept: it is part of the value.
 *
 * @example
 * ```ts
 * stableJson({ b: 1, a: { d: 2, c: 3 } }); // '{"a":{"c":3,"d":2},"b":1}'
 * ```
 */
export function stableJson(value: unknown): string {
  return JSON.stringify(value, (_key, v) => {
    if (!v || typeof v !== "object" || Array.isArray(v)) return v;
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(v).sort()) out[k] = (v as Record<string, unknown>)[k];
    return out;
  });
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * `bytes` as text, when they are UTF-8, as JSON text must be (RFC 8259
 * §8.1); throws a `SyntaxError` when they are not, where a lenient decoder
 * would put U+FFFD in place of the bad bytes and the text would read as
 * JSON that is not what was sent.
 */
export function jsonText(bytes: Uint8Array): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    throw new SyntaxError("it is not UTF-8 text");
  }
}

/** Whether `a` and `b` are equal as JSON data (key order aside). */
export function jsonEqual(a: unknown, b: unknown): boolean {
  return stableJson(a) === stableJson(b);
}

/**
 * Whether `value` nests arrays and objects more than `max` levels deep
 * (walked without recursion, so any depth can be asked about).
 *
 * @example
 * ```ts
 * nestsDeeperThan({ a: [[1]] }, 2); // true: object, array, array
 * ```
 */
export function nestsDeeperThan(value: unknown, max: number): boolean {
  const stack: [unknown, number][] = [[value, 0]];
  while (stack.length) {
    const [v, depth] = stack.pop()!;
    if (!v || typeof v !== "object") continue;
    if (depth + 1 > max) return true;
    for (const child of Array.isArray(v) ? v : Object.values(v)) {
      if (child && typeof child === "object") stack.push([child, depth + 1]);
    }
  }
  return false;
}

/**
 * The path (`a.b.0.c`) of the first key named `__proto__` in parsed JSON, or
 * undefined. `JSON.parse` keeps such a key as an own property, but any copy
 * of the object by assignment (a schema's parse, a spread) drops it: input
 * that has one must be refused rather than lose it silently.
 */
export function protoKeyPath(value: unknown): string | undefined {
  // Containers only, each with its parent: a path is built only for the key found (a body of
  // a million numbers made a million path strings).
  interface At {
    v: object;
    up?: At;
    key: string;
  }
  const path = (at: At, key: string) => {
    const parts = [key];
    for (let a: At | undefined = at; a?.up; a = a.up) parts.push(a.key);
    return parts.reverse().join(".");
  };
  if (!value || typeof value !== "object") return undefined;
  const stack: At[] = [{ v: value, key: "" }];
  while (stack.length) {
    const at = stack.pop()!;
    if (Array.isArray(at.v)) {
      // An array parsed from JSON has no key but its indexes.
      for (let i = 0; i < at.v.length; i++) {
        const child: unknown = at.v[i];
        if (child && typeof child === "object") stack.push({ v: child, up: at, key: String(i) });
      }
      continue;
    }
    for (const key of Object.keys(at.v)) {
      if (key === "__proto__") return path(at, key);
      const child = (at.v as Record<string, unknown>)[key];
      if (child && typeof child === "object") stack.push({ v: child, up: at, key });
    }
  }
  return undefined;
}

/**
 * The most arrays, objects and object members a request body may hold
 * before it is parsed.
 */
export const MAX_JSON_ITEMS = 100_000;

/**
 * Why JSON text `bytes` is not parsed, or undefined: it nests arrays and
 * objects more than `maxDepth` levels deep, or holds more than `maxItems`
 * arrays, objects and object members together. `JSON.parse` cannot be
 * interrupted, and what it makes of them costs most: 16 MiB of `[]`s or of
 * one object's keys hold the event loop (every call the process serves)
 * for seconds, where the same bytes of text or numbers take a few hundred
 * milliseconds at most. A pass over the bytes (strings skipped) counts
 * them first; text shorter than both bounds cannot exceed them and is not
 * read.
 *
 * @example
 * ```ts
 * jsonTooHeavy(new TextEncoder().encode('{"a":[[1]]}'), 2, 10);
 * // "nests arrays and objects more than 2 levels deep"
 * ```
 */
export function jsonTooHeavy(
  bytes: Uint8Array,
  maxDepth: number,
  maxItems = MAX_JSON_ITEMS,
): string | undefined {
  if (bytes.byteLength <= Math.min(maxDepth, maxItems)) return undefined;
  let depth = 0;
  let items = 0;
  for (let i = 0; i < bytes.byteLength; i++) {
    const c = bytes[i];
    if (c === 0x22) {
      // A string: to its closing quote, escapes skipped.
      for (i++; i < bytes.byteLength; i++) {
        const s = bytes[i];
        if (s === 0x5c) i++;
        else if (s === 0x22) break;
      }
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > maxDepth) {
        return `nests arrays and objects more than ${maxDepth} levels deep`;
      }
      if (++items > maxItems) return tooMany(maxItems);
    } else if (c === 0x5d || c === 0x7d) depth--;
    // A member's colon (outside strings, nothing else has one).
    else if (c === 0x3a && ++items > maxItems) return tooMany(maxItems);
  }
  return undefined;
}

const tooMany = (n: number) => `holds more than ${n} arrays, objects and object members`;
