/**
 * API keys as stored: the SHA-256 of the key, never the key. A key is
 * `ixk_` followed by 43 base64url characters (256 random bits), so a plain
 * hash is as strong as a slow one: nobody can guess a preimage.
 *
 * @module
 */
import { z } from "zod";

/** What a key may do, widest first: `full` > `read` > `inference`. */
export const SCOPES = ["full", "read", "inference"] as const;
/** One of {@linkcode SCOPES}. */
export type Scope = typeof SCOPES[number];

/** The prefix every API key starts with. */
export const KEY_PREFIX = "ixk_";

/** An API key as the store keeps it, under `apikey/system/system/{id}`. */
export const ApiKeyRecordSchema = z.object({
  id: z.string().regex(/^[a-z0-9]{8,32}$/),
  name: z.string().max(128).default(""),
  /** Lowercase hex SHA-256 of the whole key. */
  hash: z.string().regex(/^[0-9a-f]{64}$/),
  scope: z.enum(SCOPES),
  /** Restricts the key to one tenant; absent: every tenant. */
  tenant: z.string().min(1).optional(),
  /** Restricts the key to one namespace of `tenant`. */
  namespace: z.string().min(1).optional(),
  /** Expiry (ms since the epoch); absent: never. */
  expiresAt: z.int().optional(),
  createdAt: z.int(),
  /** The principal that created it. */
  createdBy: z.string(),
}).refine((k) => k.namespace === undefined || k.tenant !== undefined, {
  message: "a namespace restriction needs a tenant",
  path: ["namespace"],
});
/** A stored API key. */
export type ApiKeyRecord = z.infer<typeof ApiKeyRecordSchema>;
