/**
 * OIDC bearer tokens (Keycloak or any issuer with a JWKS endpoint): the
 * signature is checked with WebCrypto against the issuer's published keys,
 * then expiry, not-before, issuer and audience. Keys are fetched at first
 * use, again when a token names a key id not seen yet (at most every 10 s:
 * meanwhile such a token is answered 503, to try again, not 401), and again
 * every `refreshMs` in the background, so that a key the issuer withdrew
 * stops verifying; {@linkcode OidcVerifier.keysVersion} changes with the
 * key set, for caches of verified tokens. Why the keys cannot be read is
 * logged, not told to callers (it names the issuer's internal address).
 *
 * @module
 */
import { InferxError } from "../common/errors.ts";
import { logger } from "../common/log.ts";

const log = logger("gateway", "oidc");

/** What a verified token says. */
export interface TokenClaims {
  sub: string;
  /** Expiry (seconds since the epoch). */
  exp: number;
  /** Group paths and roles, from `groups`, `roles` and `realm_access.roles`. */
  roles: string[];
  /** Every claim as sent. */
  raw: Record<string, unknown>;
}

/** Settings of {@linkcode OidcVerifier}. */
export interface OidcOptions {
  jwksUrl: string;
  /** Required `iss`, when set. */
  issuer?: string;
  /** Required `aud` (or `azp`), when set. */
  audience?: string;
  /** Clock skew allowed on `exp` and `nbf` (s). @default 30 */
  leewayS?: number;
  /** How old the keys may get before they are read again (ms). @default 300000 */
  refreshMs?: number;
  /** The least time between two reads for an unknown key id (ms). @default 10000 */
  refetchMs?: number;
  /** Current time (ms); for tests. */
  now?: () => number;
}

const ALGS: Record<
  string,
  {
    import: RsaHashedImportParams | EcKeyImportParams;
    verify: AlgorithmIdentifier | EcdsaParams | RsaPssParams;
  }
> = {
  RS256: {
    import: { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" },
    verify: { name: "RSASSA-PKCS1-v1_5" },
  },
  RS384: {
    import: { name: "RSASSA-PKCS1-v1_5", hash: "SHA-384" },
    verify: { name: "RSASSA-PKCS1-v1_5" },
  },
  RS512: {
    import: { name: "RSASSA-PKCS1-v1_5", hash: "SHA-512" },
    verify: { name: "RSASSA-PKCS1-v1_5" },
  },
  PS256: {
    import: { name: "RSA-PSS", hash: "SHA-256" },
    verify: { name: "RSA-PSS", saltLength: 32 } as RsaPssParams,
  },
  ES256: {
    import: { name: "ECDSA", namedCurve: "P-256" },
    verify: { name: "ECDSA", hash: "SHA-256" } as EcdsaParams,
  },
  ES384: {
    import: { name: "ECDSA", namedCurve: "P-384" },
    verify: { name: "ECDSA", hash: "SHA-384" } as EcdsaParams,
  },
};

const unauthenticated = (why: string) =>
  new InferxError("unauthenticated", `Invalid token: ${why}`);

/** The last character of a base64url text of `n % 3 === 1` bytes (2 chars) or 2 (3): its spare bits zero. */
const LAST_OF_1 = /[AQgw]$/;
const LAST_OF_2 = /[AEIMQUYcgkosw048]$/;

/**
 * `s` decoded as base64url (RFC 7515 §2): its alphabet alone, no padding, and
 * the spare bits of its last character zero, so that one value has one text
 * (`atob` also takes `+`, `/`, `=` and any spare bits: a token would verify
 * in many spellings, each a new entry of the verified tokens' cache).
 */
function b64urlBytes(s: string): Uint8Array<ArrayBuffer> {
  const rest = s.length % 4;
  if (
    !/^[A-Za-z0-9_-]*$/.test(s) || rest === 1 || (rest === 2 && !LAST_OF_1.test(s)) ||
    (rest === 3 && !LAST_OF_2.test(s))
  ) {
    throw new Error("not canonical base64url");
  }
  const bin = atob(s.replace(/-/g, "+").replace(/_/g, "/") + "==".slice(0, (4 - rest) % 4));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function b64urlJson(s: string, what: string): Record<string, unknown> {
  try {
    const v = JSON.parse(new TextDecoder().decode(b64urlBytes(s)));
    if (v && typeof v === "object" && !Array.isArray(v)) return v;
  } catch {
    // reported below
  }
  throw unauthenticated(`its ${what} is not base64url JSON`);
}

/** Verifies JWTs against a JWKS endpoint. */
export class OidcVerifier {
  #opts: OidcOptions;
  #keys = new Map<
    string,
    { jwk: JsonWebKey & { kid?: string; alg?: string }; imported: Map<string, CryptoKey> }
  >();
  #lastFetch = -Infinity;
  /** When the keys were last read successfully (`performance.now()`). */
  #fetchedAt = -Infinity;
  #fetching?: Promise<void>;
  #version = 0;
  /** The last fetch of the keys failed with this: answered until the next fetch. */
  #fetchError?: InferxError;

  constructor(opts: OidcOptions) {
    this.#opts = opts;
  }

  /** Changes whenever the set of keys changes: a token verified before may verify no more. */
  get keysVersion(): number {
    return this.#version;
  }

  /**
   * Reads the keys again in the background when they are older than
   * `refreshMs` (callers that answer from a cache of verified tokens call it
   * on every use); a first read is awaited.
   */
  async freshen(): Promise<void> {
    if (performance.now() - this.#fetchedAt <= (this.#opts.refreshMs ?? 300_000)) return;
    const again = this.#refresh(true);
    if (this.#fetchedAt === -Infinity) await again;
    else again.catch(() => {}); // until then (or while the issuer is away) the held keys serve
  }

  /** Checks a token and returns its claims; throws `unauthenticated` saying why not. */
  async verify(token: string): Promise<TokenClaims> {
    const parts = token.split(".");
    if (parts.length !== 3) throw unauthenticated("not a JWT (three dot-separated parts)");
    const header = b64urlJson(parts[0], "header");
    const payload = b64urlJson(parts[1], "payload");
    const alg = String(header.alg);
    const spec = Object.hasOwn(ALGS, alg) ? ALGS[alg] : undefined;
    if (!spec) throw unauthenticated(`algorithm ${alg} is not accepted`);
    // Extensions it must understand (RFC 7515 §4.1.11): none is, here.
    if (header.crit !== undefined) {
      throw unauthenticated("it has critical header extensions (crit)");
    }
    const kid = typeof header.kid === "string" ? header.kid : "";
    const key = await this.#key(kid, alg);
    let signature: Uint8Array<ArrayBuffer>;
    try {
      signature = b64urlBytes(parts[2]);
    } catch {
      throw unauthenticated("its signature is not base64url");
    }
    const signed = new TextEncoder().encode(`${parts[0]}.${parts[1]}`);
    if (!await crypto.subtle.verify(spec.verify, key, signature, signed)) {
      throw unauthenticated("bad signature");
    }
    const now = (this.#opts.now?.() ?? Date.now()) / 1000;
    const leeway = this.#opts.leewayS ?? 30;
    if (typeof payload.exp !== "number") throw unauthenticated("no exp claim");
    if (payload.exp + leeway < now) throw unauthenticated("expired");
    for (const claim of ["nbf", "iat"] as const) {
      // A time in another form is no time (RFC 7519 §2: NumericDate): not taken for "none".
      if (payload[claim] !== undefined && typeof payload[claim] !== "number") {
        throw unauthenticated(`its ${claim} claim is not a number`);
      }
    }
    if (typeof payload.nbf === "number" && payload.nbf - leeway > now) {
      throw unauthenticated("not valid yet (nbf)");
    }
    if (this.#opts.issuer && payload.iss !== this.#opts.issuer) {
      throw unauthenticated(`issuer ${JSON.stringify(payload.iss)} is not ${this.#opts.issuer}`);
    }
    const aud = this.#opts.audience;
    if (aud) {
      const auds = Array.isArray(payload.aud) ? payload.aud : [payload.aud];
      if (!auds.includes(aud) && payload.azp !== aud) {
        throw unauthenticated(`audience is not ${aud}`);
      }
    }
    if (typeof payload.sub !== "string" || !payload.sub) throw unauthenticated("no sub claim");
    return { sub: payload.sub, exp: payload.exp, roles: rolesOf(payload), raw: payload };
  }

  async #key(kid: string, alg: string): Promise<CryptoKey> {
    await this.freshen();
    if (!kid && this.#keys.size > 1) {
      // Which key signed it is not said, and no read of the keys would say: not to try again.
      throw unauthenticated(
        `it names no key (kid), and the issuer publishes ${this.#keys.size}`,
      );
    }
    let entry = this.#find(kid);
    if (!entry) {
      const fetched = await this.#refresh();
      entry = this.#find(kid);
      if (!entry && !fetched) {
        // Read moments ago: a key the issuer published since is not known yet.
        throw new InferxError(
          "unavailable",
          `Key ${kid || "(no kid)"} is not among the issuer's keys read moments ago: try again`,
          { retryable: true },
        );
      }
    }
    if (!entry) throw unauthenticated(`no key ${kid || "(no kid)"} at the issuer's JWKS`);
    if (entry.jwk.alg && entry.jwk.alg !== alg) {
      throw unauthenticated(`key ${kid} is for ${entry.jwk.alg}, the token says ${alg}`);
    }
    let key = entry.imported.get(alg);
    if (!key) {
      try {
        const { alg: _a, kid: _k, use: _u, key_ops: _o, ...jwk } = entry.jwk as JsonWebKey & {
          kid?: string;
          use?: string;
        };
        key = await crypto.subtle.importKey("jwk", jwk, ALGS[alg].import, false, ["verify"]);
      } catch (err) {
        throw unauthenticated(`key ${kid} does not suit ${alg}: ${(err as Error).message}`);
      }
      entry.imported.set(alg, key);
    }
    return key;
  }

  #find(kid: string) {
    if (kid) return this.#keys.get(kid);
    // A token without kid is accepted when the issuer publishes exactly one key.
    return this.#keys.size === 1 ? [...this.#keys.values()][0] : undefined;
  }

  /**
   * Reads the keys, unless read moments ago (`aged`: they are old, only a
   * failure moments ago holds it back); resolves whether it read them.
   */
  #refresh(aged = false): Promise<boolean> {
    const now = performance.now();
    if (this.#fetching) return this.#fetching.then(() => true);
    // Between fetches: the last failure stands (503, to retry), not "no such key" (401); and
    // after a failure the keys are asked for again sooner.
    const least = this.#opts.refetchMs ?? 10_000;
    const wait = this.#fetchError ? Math.min(1_000, least) : aged ? 0 : least;
    if (now - this.#lastFetch < wait) {
      return this.#fetchError ? Promise.reject(this.#fetchError) : Promise.resolve(false);
    }
    this.#lastFetch = now;
    this.#fetching = (async () => {
      try {
        const res = await fetch(this.#opts.jwksUrl, { signal: AbortSignal.timeout(5000) });
        if (!res.ok) {
          await res.body?.cancel();
          throw new Error(`HTTP ${res.status}`);
        }
        const body = await res.json() as { keys?: unknown };
        if (!Array.isArray(body.keys)) throw new Error("no keys array");
        const keys = new Map<
          string,
          { jwk: JsonWebKey & { kid?: string; alg?: string }; imported: Map<string, CryptoKey> }
        >();
        for (const k of body.keys as (JsonWebKey & { kid?: string; use?: string })[]) {
          if (k.use && k.use !== "sig") continue;
          keys.set(k.kid ?? "", { jwk: k, imported: new Map() });
        }
        const same = keys.size === this.#keys.size &&
          [...keys].every(([kid, k]) =>
            JSON.stringify(this.#keys.get(kid)?.jwk) === JSON.stringify(k.jwk)
          );
        if (!same) this.#version++;
        this.#keys = keys;
        this.#fetchedAt = performance.now();
        this.#fetchError = undefined;
      } catch (err) {
        log.warn("Cannot read the OIDC keys at {url}: {error}", {
          url: this.#opts.jwksUrl,
          error: (err as Error).message,
        });
        throw this.#fetchError = new InferxError(
          "unavailable",
          "The identity provider's keys cannot be read now: try again",
          { retryable: true },
        );
      } finally {
        this.#fetching = undefined;
      }
    })();
    return this.#fetching.then(() => true);
  }
}

function rolesOf(p: Record<string, unknown>): string[] {
  const out: string[] = [];
  const add = (v: unknown) => {
    if (Array.isArray(v)) { for (const r of v) if (typeof r === "string") out.push(r); }
  };
  add(p.groups);
  add(p.roles);
  add((p.realm_access as { roles?: unknown } | undefined)?.roles);
  return out;
}
