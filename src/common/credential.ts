/**
 * Bearer credentials, as every HTTP face of the platform reads them:
 * `Authorization: Bearer X` or `X-Api-Key: X`, and the administrator's key
 * (`INFERX_ADMIN_APIKEY`) compared by its hash in constant time.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { createHash, timingSafeEqual } from "node:crypto";
import { InferxError } from "./errors.ts";
import { KEY_PREFIX } from "../model/apikey.ts";

/** What credentials are read from: `Headers`, or anything with `get`. */
export interface HeaderSource {
  get(name: string): string | null | undefined;
}

/** SHA-256 of a key, lowercase hex: what the store keeps. */
export function hashKey(key: string): string {
  return createHash("sha256").update(key).digest("hex");
}

/**
 * The bearer credential of a request: `Authorization: Bearer X` or
 * `X-Api-Key: X` (both: the same). A field sent twice (`Headers` joins the
 * two with ", ", which no key or token holds) is refused, saying so, and so
 * are two fields that differ.
 */
export function credential(headers: HeaderSource): string | undefined {
  const auth = headers.get("authorization");
  if (auth !== null && auth !== undefined) {
    if (auth.includes(", ")) throw sentTwice("Authorization");
    const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
    if (!m) {
      throw new InferxError(
        "unauthenticated",
        "Invalid Authorization header: expected Bearer <API key or token>",
      );
    }
    // Two credentials that differ leave who calls unsaid: neither is taken over the other.
    const key = headers.get("x-api-key");
    if (key !== null && key !== undefined && key !== m[1]) {
      throw new InferxError(
        "unauthenticated",
        "Invalid credentials: Authorization and X-Api-Key carry different credentials (send one)",
      );
    }
    return m[1];
  }
  const key = headers.get("x-api-key");
  if (key?.includes(", ")) throw sentTwice("X-Api-Key");
  return key ?? undefined;
}

const sentTwice = (name: string) =>
  new InferxError("unauthenticated", `Invalid credentials: ${name} sent more than once`);

/**
 * How the placeholders of the shipped manifests begin (`k8s/base/secrets.yaml`):
 * a secret everyone who has read them knows is refused.
 */
export const PLACEHOLDER = "change-me";

/** Why `key` cannot be the administrator's key (`INFERX_ADMIN_APIKEY`), or undefined. */
export function adminKeyProblem(key: string): string | undefined {
  if (key.length < 16) return "must be at least 16 characters";
  if (key.startsWith(PLACEHOLDER)) {
    return "is the manifests' placeholder (k8s/base/secrets.yaml): set a key of your own";
  }
  // Such a credential is looked up as a stored API key and could never be the admin's.
  if (key.startsWith(KEY_PREFIX)) {
    return `must not begin with ${KEY_PREFIX} (the prefix of stored API keys)`;
  }
  return undefined;
}

/** The administrator's key, kept as its hash. */
export class AdminKey {
  readonly #hash: Buffer;

  constructor(key: string) {
    this.#hash = Buffer.from(hashKey(key), "hex");
  }

  /** Whether `cred` is the key (constant time). */
  matches(cred: string): boolean {
    return timingSafeEqual(Buffer.from(hashKey(cred), "hex"), this.#hash);
  }
}
