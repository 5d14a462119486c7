/**
 * Who is calling, and what they may do. A request carries an API key or an
 * OIDC token (`Authorization: Bearer ...`); it becomes a {@linkcode Principal}
 * holding grants, each a scope (`full` > `read` > `inference`) over every
 * tenant, one tenant, or one namespace. Without credentials a caller is
 * anonymous and may call the functions of tenant `public`, as every caller
 * may.
 *
 * Keys are looked up by their SHA-256 in a map the gateway keeps from a watch
 * on the store, so the warm path does no I/O. Auth is on when an
 * administrator key (`INFERX_ADMIN_APIKEY`) or an OIDC issuer is configured;
 * without either, every caller is the administrator (a development setup,
 * logged loudly at start).
 *
 * @module
 */
import {
  AdminKey,
  adminKeyProblem,
  credential,
  hashKey,
  type HeaderSource,
} from "../common/credential.ts";
import { InferxError, NotFoundError } from "../common/errors.ts";
import { logger } from "../common/log.ts";
import { type ApiKeyRecord, ApiKeyRecordSchema, KEY_PREFIX, type Scope } from "../model/apikey.ts";
import { SYSTEM } from "../model/keys.ts";
import { type Informer, startInformer } from "../rpc/informer.ts";
import type { MetaClient } from "../rpc/types.ts";
import type { OidcVerifier } from "./oidc.ts";

const log = logger("auth");

/** What a route asks of its caller. */
export type Action = "inference" | "read" | "write";

/** A scope over everything, a tenant, or a namespace of a tenant. */
export interface Grant {
  scope: Scope;
  tenant?: string;
  namespace?: string;
}

/** An authenticated (or anonymous) caller. */
export interface Principal {
  /** For audit and messages: `admin`, `key:{id}`, `oidc:{sub}`, `anonymous`. Never a secret. */
  id: string;
  grants: Grant[];
  anonymous?: boolean;
  /** An API key's expiry (epoch ms): keys it creates expire no later. */
  expiresAt?: number;
  /** The scrape credential (`INFERX_METRICS_KEY`): `/metrics`, and nothing else. */
  metrics?: boolean;
}

const ACTIONS: Record<Scope, readonly Action[]> = {
  full: ["inference", "read", "write"],
  read: ["read", "inference"],
  inference: ["inference"],
};

const SCOPE_RANK: Record<Scope, number> = { full: 3, read: 2, inference: 1 };

/** The caller without credentials. */
export const ANONYMOUS: Principal = {
  id: "anonymous",
  anonymous: true,
  grants: [{ scope: "inference", tenant: "public" }],
};

/** The administrator (and every caller while auth is off). */
export const ADMIN: Principal = { id: "admin", grants: [{ scope: "full" }] };

/** A scraper with the metrics key: no grant, so every route but `/metrics` refuses it. */
export const METRICS: Principal = { id: "metrics", grants: [], metrics: true };

/** Whether grant `g` reaches `tenant`/`namespace` (undefined: the whole tenant or cluster). */
export function covers(g: Grant, tenant?: string, namespace?: string): boolean {
  if (g.tenant === undefined) return true;
  if (tenant !== g.tenant) return false;
  return g.namespace === undefined || namespace === g.namespace;
}

/** Whether one of `grants` lets its holder do `action` in `tenant` (and `namespace`). */
function granted(grants: readonly Grant[], action: Action, tenant?: string, namespace?: string) {
  return grants.some((g) => ACTIONS[g.scope].includes(action) && covers(g, tenant, namespace));
}

/**
 * Whether `p` may do `action` in `tenant` (and `namespace`); no tenant:
 * cluster-wide. What a caller without credentials may do (call `public`'s
 * functions), every caller may: a key does not take a right away.
 */
export function allows(p: Principal, action: Action, tenant?: string, namespace?: string): boolean {
  return granted(p.grants, action, tenant, namespace) ||
    (!p.anonymous && granted(ANONYMOUS.grants, action, tenant, namespace));
}

/**
 * Whether `p`'s own grants let it do `action` there (not counting what every
 * caller may): a bare model name is looked for there first.
 */
export function allowsOwn(
  p: Principal,
  action: Action,
  tenant?: string,
  namespace?: string,
): boolean {
  return granted(p.grants, action, tenant, namespace);
}

/**
 * How far `p`'s own grants to read reach over `tenant`/`namespace`: the
 * whole cluster, the whole tenant, or that namespace only (undefined: none).
 */
export function readReach(
  p: Principal,
  tenant: string,
  namespace?: string,
): "cluster" | "tenant" | "namespace" | undefined {
  if (granted(p.grants, "read")) return "cluster";
  if (granted(p.grants, "read", tenant)) return "tenant";
  if (namespace !== undefined && granted(p.grants, "read", tenant, namespace)) return "namespace";
  return undefined;
}

/** Whether `p` may create or revoke a key with `scope` over `tenant`/`namespace`. */
export function mayManageKey(
  p: Principal,
  key: { scope: Scope; tenant?: string; namespace?: string },
): boolean {
  return p.grants.some((g) =>
    g.scope === "full" && SCOPE_RANK[g.scope] >= SCOPE_RANK[key.scope] &&
    covers(g, key.tenant, key.namespace)
  );
}

/**
 * Refuses an anonymous caller (401) of a route that answers what a
 * caller's credentials reach, whatever they are: to `what` (`list calls`).
 */
export function requireCredentials(p: Principal, what: string): void {
  if (!p.anonymous) return;
  throw new InferxError(
    "unauthenticated",
    `Credentials required to ${what}: send Authorization: Bearer <API key or token>`,
  );
}

/** Throws the right error when `p` may not do `action` there: 401 for anonymous, else 403. */
export function authorize(p: Principal, action: Action, tenant?: string, namespace?: string) {
  if (allows(p, action, tenant, namespace)) return;
  const where = tenant === undefined
    ? "cluster-wide"
    : namespace === undefined
    ? `in tenant ${tenant}`
    : `in ${tenant}/${namespace}`;
  if (p.anonymous) {
    throw new InferxError(
      "unauthenticated",
      `Credentials required to ${action} ${where}: send Authorization: Bearer <API key or token>`,
    );
  }
  throw new InferxError("forbidden", `${p.id} may not ${action} ${where}`);
}

/**
 * Grants from OIDC group paths or roles: `/tenant/admin/{t}`,
 * `/tenant/user/{t}`, `/namespace/admin/{t}/{ns}`, `/namespace/user/{t}/{ns}`
 * (a leading slash is optional). Anything else grants nothing.
 */
export function rolesToGrants(roles: readonly string[]): Grant[] {
  const grants: Grant[] = [];
  for (const role of roles) {
    const p = role.replace(/^\//, "").split("/");
    const scope: Scope | undefined = p[1] === "admin"
      ? "full"
      : p[1] === "user"
      ? "read"
      : undefined;
    if (!scope) continue;
    if (p[0] === "tenant" && p.length === 3 && p[2]) grants.push({ scope, tenant: p[2] });
    if (p[0] === "namespace" && p.length === 4 && p[2] && p[3]) {
      grants.push({ scope, tenant: p[2], namespace: p[3] });
    }
  }
  return grants;
}

/** A new random key and its id. */
export function newApiKey(): { id: string; key: string } {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  const key = KEY_PREFIX + btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-")
    .replace(/\//g, "_").replace(/=+$/, "");
  const id = Array.from(
    crypto.getRandomValues(new Uint8Array(6)),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
  return { id, key };
}

/** Settings of {@linkcode Authenticator}. */
export interface AuthOptions {
  /** The administrator's key (`INFERX_ADMIN_APIKEY`). */
  adminKey?: string;
  /** A credential for `/metrics` alone (`INFERX_METRICS_KEY`). */
  metricsKey?: string;
  oidc?: OidcVerifier;
  /** Current time (ms); for tests. */
  now?: () => number;
}

const TOKEN_CACHE_MAX = 10_000;
/** How often expired keys' records are looked for and deleted (ms). */
const EXPIRED_SWEEP_MS = 60_000;

/** Turns request headers into a principal. */
export class Authenticator {
  readonly enabled: boolean;
  #admin?: AdminKey;
  #metrics?: AdminKey;
  #oidc?: OidcVerifier;
  #now: () => number;
  #byHash = new Map<string, KeyEntry>();
  /** Keys seen on requests, so the warm path hashes a key once; checked against #byHash. */
  #seen = new Map<string, KeyEntry>();
  #idToHash = new Map<string, string>();
  #tokens = new Map<string, { principal: Principal; expMs: number; keys: number }>();
  #informer?: Informer;
  #sweep?: ReturnType<typeof setInterval>;

  constructor(opts: AuthOptions) {
    const problem = opts.adminKey === undefined ? undefined : adminKeyProblem(opts.adminKey);
    if (problem) throw new InferxError("invalid", `INFERX_ADMIN_APIKEY ${problem}`);
    this.#admin = opts.adminKey ? new AdminKey(opts.adminKey) : undefined;
    const metricsProblem = opts.metricsKey === undefined
      ? undefined
      : adminKeyProblem(opts.metricsKey);
    if (metricsProblem) throw new InferxError("invalid", `INFERX_METRICS_KEY ${metricsProblem}`);
    this.#metrics = opts.metricsKey ? new AdminKey(opts.metricsKey) : undefined;
    this.#oidc = opts.oidc;
    this.#now = opts.now ?? Date.now;
    this.enabled = this.#admin !== undefined || this.#oidc !== undefined;
  }

  /** Follows the stored API keys. */
  async start(meta: MetaClient): Promise<void> {
    if (!this.enabled) {
      log.warn(
        "Auth is off: every caller is the administrator. Set INFERX_ADMIN_APIKEY (or INFERX_OIDC_JWKS_URL) to turn it on",
      );
    }
    this.#informer = await startInformer(meta, "apikey", {
      upsert: (r) => {
        const parsed = ApiKeyRecordSchema.safeParse(JSON.parse(r.value));
        if (parsed.success) this.upsertKey(parsed.data);
        else log.warn("Ignoring malformed API key {id}", { id: r.name });
      },
      remove: (ref) => this.revokeKey(ref.name),
    });
    this.#sweep = setInterval(() => this.dropExpired(meta), EXPIRED_SWEEP_MS);
    Deno.unrefTimer(this.#sweep);
  }

  stop(): void {
    this.#informer?.stop();
    clearInterval(this.#sweep);
  }

  /**
   * Deletes the records of keys that have expired (any gateway may: one that
   * finds a record gone already has nothing to do). Until then an expired
   * key is refused and listed as expired; after, it is gone, and keeps no
   * tenant or namespace from being deleted.
   */
  async dropExpired(meta: MetaClient): Promise<void> {
    const now = this.#now();
    for (const { rec } of [...this.#byHash.values()]) {
      if (rec.expiresAt === undefined || rec.expiresAt > now) continue;
      const ref = { type: "apikey" as const, tenant: SYSTEM, namespace: SYSTEM, name: rec.id };
      await meta.delete(ref).catch((err) => {
        if (err instanceof NotFoundError) return;
        log.warn("Cannot delete expired API key {id}: {error}", { id: rec.id, error: String(err) });
      });
    }
  }

  upsertKey(rec: ApiKeyRecord): void {
    this.removeKey(rec.id);
    const principal: Principal = {
      id: `key:${rec.id}`,
      grants: [{ scope: rec.scope, tenant: rec.tenant, namespace: rec.namespace }],
      ...(rec.expiresAt === undefined ? {} : { expiresAt: rec.expiresAt }),
    };
    this.#byHash.set(rec.hash, { rec, principal });
    this.#idToHash.set(rec.id, rec.hash);
  }

  removeKey(id: string): void {
    const h = this.#idToHash.get(id);
    if (h === undefined) return;
    this.#byHash.delete(h);
    this.#idToHash.delete(id);
  }

  /** A key deleted (revoked, expired): its plaintext, cached from its last use, goes too. */
  revokeKey(id: string): void {
    const gone = this.#byHash.get(this.#idToHash.get(id) ?? "");
    this.removeKey(id);
    // One pass over the cache: a deletion is rare (an upsert, which all keys get again when
    // the watch lists anew, only replaces the entry, which the cache then finds stale).
    if (gone) { for (const [key, entry] of this.#seen) if (entry === gone) this.#seen.delete(key); }
  }

  /**
   * Throws `unauthenticated` when `p`, authenticated from an API key at a
   * request's head, no longer holds: the key was revoked, or expired, while
   * the request's body was still coming. A call whose body took its time is
   * checked again once it is in, before it runs or is stored; an
   * administrator, an OIDC token's holder (valid to its expiry) and the
   * anonymous caller always hold.
   */
  stillHolds(p: Principal): void {
    if (!p.id.startsWith("key:")) return;
    const id = p.id.slice(4);
    const entry = this.#byHash.get(this.#idToHash.get(id) ?? "");
    if (!entry) {
      throw new InferxError(
        "unauthenticated",
        `API key ${id} was revoked while the request's body was being sent`,
      );
    }
    const exp = entry.rec.expiresAt;
    if (exp !== undefined && exp <= this.#now()) {
      throw new InferxError(
        "unauthenticated",
        `API key ${id} expired at ${
          new Date(exp).toISOString()
        }, while the request's body was being sent`,
      );
    }
  }

  /** The caller of a request; throws `unauthenticated` for bad credentials. */
  authenticate(headers: HeaderSource): Principal | Promise<Principal> {
    if (!this.enabled) return ADMIN;
    const cred = credential(headers);
    if (cred === undefined) return ANONYMOUS;
    if (cred.startsWith(KEY_PREFIX)) return this.#byKey(cred);
    if (this.#admin?.matches(cred)) return ADMIN;
    if (this.#metrics?.matches(cred)) return METRICS;
    if (this.#oidc && cred.split(".").length === 3) return this.#byToken(cred);
    throw new InferxError("unauthenticated", "Invalid credentials: unknown API key or token");
  }

  #byKey(key: string): Principal {
    let found = this.#seen.get(key);
    if (!found || this.#byHash.get(found.rec.hash) !== found) {
      // First use, or the key changed (revoked, replaced): look it up by its hash.
      this.#seen.delete(key);
      found = this.#byHash.get(hashKey(key));
      if (!found) throw new InferxError("unauthenticated", "Invalid API key");
      if (this.#seen.size >= TOKEN_CACHE_MAX) this.#seen.clear();
      this.#seen.set(key, found);
    }
    const exp = found.rec.expiresAt;
    if (exp !== undefined && exp <= this.#now()) {
      throw new InferxError(
        "unauthenticated",
        `API key ${found.rec.id} expired at ${new Date(exp).toISOString()}`,
      );
    }
    return found.principal;
  }

  async #byToken(token: string): Promise<Principal> {
    const oidc = this.#oidc!;
    oidc.freshen().catch(() => {}); // old keys read again in the background
    const cached = this.#tokens.get(token);
    // Verified against the keys as they are: once they change (a key withdrawn), again.
    if (cached && cached.expMs > this.#now() && cached.keys === oidc.keysVersion) {
      return cached.principal;
    }
    const claims = await oidc.verify(token);
    const principal: Principal = { id: `oidc:${claims.sub}`, grants: rolesToGrants(claims.roles) };
    if (this.#tokens.size >= TOKEN_CACHE_MAX) this.#tokens.clear();
    this.#tokens.set(token, { principal, expMs: claims.exp * 1000, keys: oidc.keysVersion });
    return principal;
  }
}

interface KeyEntry {
  rec: ApiKeyRecord;
  principal: Principal;
}
