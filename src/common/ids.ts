/** Short random identifiers for pods, requests and gateways. @module */

/** A random lowercase hex id of `bytes` bytes, prefixed: `pod-3f9a1c2e`. */
export function newId(prefix: string, bytes = 4): string {
  const b = crypto.getRandomValues(new Uint8Array(bytes));
  return `${prefix}-${Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("")}`;
}
