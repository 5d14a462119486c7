/**
 * Address ranges: CIDR lists as operators write them (`127.0.0.1/32,
 * 10.1.0.0/16, fd00::/8`), and the ranges that are not on the public
 * internet (loopback, private, link-local, ...), over `node:net`'s
 * `BlockList`, which also matches IPv4 addresses written as IPv6
 * (`::ffff:127.0.0.1`).
 *
 * @module
 */
import { BlockList, isIP } from "node:net";
import { ValidationError } from "./errors.ts";

/** One range: an address and a prefix length. */
export interface Cidr {
  address: string;
  prefix: number;
  family: "ipv4" | "ipv6";
}

/**
 * Parses a comma- or space-separated CIDR list; a bare address is a single
 * host (`/32`, `/128`). Throws {@linkcode ValidationError} naming `what` and
 * the bad entry.
 *
 * @example
 * ```ts
 * parseCidrList("127.0.0.1, 10.0.0.0/8", "INFERX_CALLBACK_ALLOW");
 * // [{ address: "127.0.0.1", prefix: 32, family: "ipv4" }, { address: "10.0.0.0", prefix: 8, ... }]
 * ```
 */
export function parseCidrList(text: string, what: string): Cidr[] {
  const out: Cidr[] = [];
  for (const entry of text.split(/[\s,]+/)) {
    if (!entry) continue;
    const [address, bits, ...rest] = entry.split("/");
    const v = isIP(address);
    const max = v === 4 ? 32 : 128;
    const prefix = bits === undefined ? max : Number(bits);
    if (
      v === 0 || rest.length || !Number.isInteger(prefix) || prefix < 0 || prefix > max ||
      (bits !== undefined && !/^\d+$/.test(bits))
    ) {
      throw new ValidationError(
        `Invalid ${what}: "${entry}" is not an address or address/prefix (e.g. 10.0.0.0/8)`,
        what,
      );
    }
    out.push({ address, prefix, family: v === 4 ? "ipv4" : "ipv6" });
  }
  return out;
}

/** Ranges that are not public internet addresses, IPv4 then IPv6. */
export const NON_PUBLIC: readonly Cidr[] = parseCidrList(
  [
    "0.0.0.0/8", // this network
    "10.0.0.0/8", // private
    "100.64.0.0/10", // carrier-grade NAT
    "127.0.0.0/8", // loopback
    "169.254.0.0/16", // link-local (cloud metadata services live here)
    "172.16.0.0/12", // private
    "192.0.0.0/24", // IETF protocol assignments
    "192.0.2.0/24", // documentation
    "192.88.99.0/24", // 6to4 relay
    "192.168.0.0/16", // private
    "198.18.0.0/15", // benchmarking
    "198.51.100.0/24", // documentation
    "203.0.113.0/24", // documentation
    "224.0.0.0/4", // multicast
    "240.0.0.0/4", // reserved, broadcast
    "::/96", // unspecified, and IPv4-compatible (deprecated)
    "::1/128", // loopback
    "::ffff:0:0:0/96", // IPv4-translated (SIIT): an IPv4 address inside
    "64:ff9b::/96", // IPv4/IPv6 translation
    "64:ff9b:1::/48", // IPv4/IPv6 translation, local use
    "2001::/32", // Teredo: an IPv4 address inside
    "2002::/16", // 6to4: an IPv4 address inside
    "fec0::/10", // site-local (deprecated, private)
    "100::/64", // discard
    "2001:db8::/32", // documentation
    "fc00::/7", // unique local (private)
    "fe80::/10", // link-local
    "ff00::/8", // multicast
  ].join(","),
  "NON_PUBLIC",
);

/** A set of ranges to test addresses against. */
export class AddressSet {
  readonly #list = new BlockList();
  readonly size: number;

  constructor(ranges: readonly Cidr[]) {
    for (const r of ranges) this.#list.addSubnet(r.address, r.prefix, r.family);
    this.size = ranges.length;
  }

  /** Whether `address` (IPv4 or IPv6 text) is in one of the ranges. */
  has(address: string): boolean {
    const v = isIP(address);
    if (v === 0) return false;
    return this.#list.check(address, v === 4 ? "ipv4" : "ipv6");
  }
}

/**
 * Parses the pod network's range `a.b.c.d/n` (IPv4, /16 to /28: it is cut
 * into /30 blocks) into its base address (as a number) and prefix length.
 */
export function parsePodCidr(cidr: string): { base: number; bits: number } {
  const m = cidr.match(/^(\d+)\.(\d+)\.(\d+)\.(\d+)\/(\d+)$/);
  const octets = m ? m.slice(1, 5).map(Number) : [];
  const bits = m ? Number(m[5]) : NaN;
  if (!m || octets.some((o) => o > 255) || bits < 16 || bits > 28) {
    throw new ValidationError(`Invalid pod network "${cidr}": an IPv4 range /16 to /28`, "cidr");
  }
  const base = ((octets[0] << 24) >>> 0) + (octets[1] << 16) + (octets[2] << 8) + octets[3];
  const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0;
  const start = (base & mask) >>> 0;
  if (start !== base) {
    // `ip` refuses such a range, in the route that fences it and in every pod's address: taken,
    // it would fail each pod start on the node.
    const dotted = [24, 16, 8, 0].map((s) => (start >>> s) & 255).join(".");
    throw new ValidationError(
      `Invalid pod network "${cidr}": its address has bits set past /${bits} (the range is ${dotted}/${bits})`,
      "cidr",
    );
  }
  return { base: start, bits };
}
