/**
 * Hop-by-hop header fields (RFC 9110 §7.6.1): those of one connection,
 * which a proxy never copies from one message to the next, and the ones a
 * message's `Connection` field names.
 *
 * @module
 */

/** Hop-by-hop and framing fields: never copied from one message to another. */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
]);

/**
 * The fields a message's `Connection` values name besides the hop-by-hop
 * set (RFC 9110 §7.6.1: they are for this hop alone, and go with it), or
 * undefined when they name none: `close` and `keep-alive` alone, the usual.
 */
function connectionNamed(value: string): Set<string> | undefined {
  // What clients send on nearly every request: nothing to look at.
  const v = value.length <= 10 ? value.toLowerCase() : "";
  if (v === "keep-alive" || v === "close") return undefined;
  let out: Set<string> | undefined;
  for (const t of value.split(",")) {
    const name = t.trim().toLowerCase();
    if (name && name !== "close" && !HOP_BY_HOP.has(name)) (out ??= new Set()).add(name);
  }
  return out;
}

/** `fields` less those `connectionValue` names (the same array when it names none). */
export function withoutConnectionNamed(
  fields: [string, string][],
  connectionValue: string | undefined,
): [string, string][] {
  const named = connectionValue === undefined ? undefined : connectionNamed(connectionValue);
  return named ? fields.filter(([k]) => !named.has(k)) : fields;
}
