/**
 * Callbacks of asynchronous calls: where the gateway may send them, how
 * they are signed, and one delivery.
 *
 * A callback URL must be `http` or `https`; its host name is resolved and
 * EVERY address checked: loopback, private, link-local (cloud metadata),
 * multicast and other non-public ranges are refused unless the operator
 * allows them with `INFERX_CALLBACK_ALLOW` (a CIDR list). The check runs
 * when the call is accepted and again at each delivery, and the connection
 * goes to the addresses that were checked (the lookup is pinned), so a name
 * that changes its answer in between reaches nothing unchecked. Redirects
 * are not followed.
 *
 * Each delivery is signed with the tenant's callback secret:
 * `x-inferx-signature: sha256=<hex HMAC-SHA256 of the body>`.
 *
 * @module
 */
import { createHmac } from "node:crypto";
import { lookup } from "node:dns/promises";
import * as http from "node:http";
import * as https from "node:https";
import { isIP } from "node:net";
import { AddressSet, type Cidr, NON_PUBLIC } from "../../common/cidr.ts";
import { ValidationError } from "../../common/errors.ts";
import { retryOnConflict } from "../../common/retry.ts";
import { SYSTEM } from "../../model/keys.ts";
import { CallSecretSchema } from "../../model/call.ts";
import type { MetaClient, ObjectRef } from "../../rpc/types.ts";

/** Options of {@linkcode CallbackSender}. */
export interface CallbackOptions {
  /** Non-public ranges callbacks may reach anyway (`INFERX_CALLBACK_ALLOW`). @default none */
  allow?: readonly Cidr[];
  /** How long one delivery may take (ms). @default 10000 */
  timeoutMs?: number;
  /** The addresses of a host name. @default the system resolver (`getaddrinfo`), every address */
  resolve?: (host: string) => Promise<string[]>;
}

/** A callback URL that passed the checks, with the addresses it may be sent to. */
export interface CheckedUrl {
  url: URL;
  /** The host name without IPv6 brackets. */
  host: string;
  addresses: string[];
}

const MAX_URL = 2048;

/**
 * A callback URL whose host name did not resolve: refused (400) when a call
 * is accepted, but only one failed try when a callback is delivered (the
 * resolver may fail for a while, or the name come into being).
 */
export class UnresolvedHost extends ValidationError {
  constructor(message: string, field?: string) {
    super(message, field);
    this.name = "UnresolvedHost";
  }
}

async function systemResolve(host: string): Promise<string[]> {
  const found = await lookup(host, { all: true, verbatim: true });
  return found.map((a) => a.address);
}

/** Checks callback URLs and sends callbacks. */
export class CallbackSender {
  readonly #allow: AddressSet;
  readonly #refused = new AddressSet(NON_PUBLIC);
  readonly #timeoutMs: number;
  readonly #resolve: (host: string) => Promise<string[]>;

  constructor(options: CallbackOptions = {}) {
    this.#allow = new AddressSet(options.allow ?? []);
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    this.#resolve = options.resolve ?? systemResolve;
  }

  /** Whether the gateway may send to `address`: public, or in `INFERX_CALLBACK_ALLOW`. */
  allows(address: string): boolean {
    return this.#allow.has(address) || !this.#refused.has(address);
  }

  /**
   * Parses and checks `raw`; throws {@linkcode ValidationError} (400) saying
   * why a URL is refused.
   */
  async check(raw: string): Promise<CheckedUrl> {
    const field = "x-inferx-callback-url";
    // A URL has no whitespace (a space is %20): two fields of the header are joined with ", ".
    if (raw.includes(", ")) {
      throw new ValidationError(
        "Invalid callback URL: x-inferx-callback-url sent more than once (a call has one callback)",
        field,
      );
    }
    if (/\s/.test(raw)) {
      throw new ValidationError(`Invalid callback URL "${raw}": whitespace in a URL`, field);
    }
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      throw new ValidationError(`Invalid callback URL "${raw}": not an absolute URL`, field);
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw new ValidationError(
        `Invalid callback URL "${raw}": only http and https callbacks are sent`,
        field,
      );
    }
    if (raw.length > MAX_URL) {
      throw new ValidationError(`Invalid callback URL: longer than ${MAX_URL} characters`, field);
    }
    if (url.username || url.password) {
      throw new ValidationError(
        "Invalid callback URL: credentials in the URL are not sent; verify the signature instead",
        field,
      );
    }
    const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
    let addresses: string[];
    if (isIP(host)) addresses = [host];
    else {
      try {
        addresses = await this.#resolve(host);
      } catch (err) {
        throw new UnresolvedHost(
          `Invalid callback URL "${raw}": cannot resolve ${host} (${(err as Error).message})`,
          field,
        );
      }
      if (!addresses.length) {
        throw new ValidationError(`Invalid callback URL "${raw}": ${host} has no address`, field);
      }
    }
    const refused = addresses.filter((a) => !this.allows(a));
    if (refused.length) {
      throw new ValidationError(
        `Callback URL "${raw}" refused: ${host} resolves to ${
          refused.join(", ")
        }, which is not a public address; an operator can allow it with INFERX_CALLBACK_ALLOW`,
        field,
      );
    }
    return { url, host, addresses };
  }

  /**
   * POSTs `body` (JSON) to `url` once, signed with `secret`, connecting only
   * to addresses that pass the check. Resolves with the receiver's status
   * code; rejects when it cannot be reached or the URL is refused.
   */
  async post(
    rawUrl: string,
    body: string,
    secret: string,
    headers: Record<string, string> = {},
    signal?: AbortSignal,
  ): Promise<number> {
    signal?.throwIfAborted();
    const target = await this.check(rawUrl);
    const { url } = target;
    const bytes = new TextEncoder().encode(body);
    const mod = url.protocol === "https:" ? https : http;
    const pinned = target.addresses.map((address) => ({ address, family: isIP(address) }));
    return await new Promise<number>((resolve, reject) => {
      const req = mod.request({
        method: "POST",
        host: target.host,
        port: url.port || (url.protocol === "https:" ? 443 : 80),
        path: `${url.pathname}${url.search}`,
        headers: {
          ...headers,
          "content-type": "application/json",
          "content-length": String(bytes.byteLength),
          "user-agent": "inferx-callback/1",
          "x-inferx-signature": signature(secret, bytes),
        },
        timeout: this.#timeoutMs,
        // Connect to the checked addresses only: no second lookup to be fooled by.
        lookup: ((
          _host: string,
          options: { all?: boolean },
          cb: (...args: unknown[]) => void,
        ) => {
          if (options?.all) cb(null, pinned);
          else cb(null, pinned[0].address, pinned[0].family);
        }) as never,
      }, (res) => {
        // The status is the receiver's answer: its body is not waited for (one that never
        // ends made a 2xx count as a failure, and the callback was sent again).
        resolve(res.statusCode ?? 0);
        res.on("error", () => {});
        res.destroy();
      });
      // The whole try is bounded, not only the quiet between bytes (`timeout`): a receiver that
      // sends its head a byte every few seconds is never quiet for long, and held the delivery
      // (and a connection of the tenant's few) for as long as it went on.
      const noAnswer = () => new Error(`no answer within ${this.#timeoutMs} ms`);
      const deadline = setTimeout(() => req.destroy(noAnswer()), this.#timeoutMs);
      req.on("timeout", () => req.destroy(noAnswer()));
      req.on("error", reject);
      // Broken off when its sender no longer holds the call (another gateway delivers).
      const abort = () => req.destroy(new Error("aborted"));
      signal?.addEventListener("abort", abort, { once: true });
      req.on("close", () => {
        clearTimeout(deadline);
        signal?.removeEventListener("abort", abort);
      });
      req.end(bytes);
    });
  }
}

/** `sha256=` and the hex HMAC-SHA256 of `body` with `secret`: the value of `x-inferx-signature`. */
export function signature(secret: string, body: Uint8Array | string): string {
  return `sha256=${createHmac("sha256", secret).update(body).digest("hex")}`;
}

const secretRef = (tenant: string): ObjectRef => ({
  type: "callsecret",
  tenant: SYSTEM,
  namespace: SYSTEM,
  name: tenant,
});

function newSecret(): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(32)),
    (b) => b.toString(16).padStart(2, "0"),
  )
    .join("");
}

/**
 * The callback secret of `tenant`, made on first use; `rotate` replaces it.
 * Two gateways making it at once end with the same secret (the store's
 * create decides).
 */
export function tenantSecret(
  meta: MetaClient,
  tenant: string,
  options: { rotate?: boolean } = {},
): Promise<string> {
  const ref = secretRef(tenant);
  return retryOnConflict(async () => {
    const cur = await meta.get(ref);
    if (cur && !options.rotate) return CallSecretSchema.parse(JSON.parse(cur.value)).secret;
    const object = { tenant, secret: newSecret(), createdAt: Date.now() };
    if (cur) await meta.update({ ...ref, object, revision: cur.revision });
    else await meta.create({ ...ref, object });
    return object.secret;
  });
}
