/**
 * Key layout of the metadata store, as InferX lays it out:
 * `/registry/{type}/{tenant}/{namespace}/{name}`. Cluster-wide objects
 * (tenants, nodes) live under tenant `system`, namespace `system`; a
 * namespace lives under its tenant with namespace `system`.
 *
 * @module
 */

/** Object types the platform stores. */
export const OBJECT_TYPES = [
  "tenant",
  "namespace",
  "function",
  "funcpolicy",
  "node",
  "pod",
  "apikey",
  "snapshot",
  "call",
  "callsecret",
  "callbody",
] as const;
/** One of {@linkcode OBJECT_TYPES}. */
export type ObjectType = typeof OBJECT_TYPES[number];

/** Types users manage through the object API. */
export const USER_TYPES = ["tenant", "namespace", "function", "funcpolicy"] as const;
/** One of {@linkcode USER_TYPES}. */
export type UserType = typeof USER_TYPES[number];

/** The tenant and namespace that hold cluster-wide objects. */
export const SYSTEM = "system";

/** Root of every key. */
export const REGISTRY = "/registry/";

/** Whether `s` names an object type. */
export function isObjectType(s: string): s is ObjectType {
  return (OBJECT_TYPES as readonly string[]).includes(s);
}

/** Whether `s` names a user-managed object type. */
export function isUserType(s: string): s is UserType {
  return (USER_TYPES as readonly string[]).includes(s);
}

/** The store key of one object. */
export function objectKey(
  type: ObjectType,
  tenant: string,
  namespace: string,
  name: string,
): string {
  return `${REGISTRY}${type}/${tenant}/${namespace}/${name}`;
}

/** The prefix of a type, optionally narrowed to a tenant and namespace. */
export function typePrefix(type: ObjectType, tenant?: string, namespace?: string): string {
  let p = `${REGISTRY}${type}/`;
  if (tenant !== undefined) {
    p += `${tenant}/`;
    if (namespace !== undefined) p += `${namespace}/`;
  }
  return p;
}

/** Splits a key into its parts, or undefined when it is not a registry key. */
export function parseKey(
  key: string,
): { type: ObjectType; tenant: string; namespace: string; name: string } | undefined {
  if (!key.startsWith(REGISTRY)) return undefined;
  const parts = key.slice(REGISTRY.length).split("/");
  if (parts.length !== 4 || !isObjectType(parts[0])) return undefined;
  const [type, tenant, namespace, name] = parts as [ObjectType, string, string, string];
  return { type, tenant, namespace, name };
}

/** `tenant/namespace/name`, the id of a function everywhere outside the store. */
export function funcId(tenant: string, namespace: string, name: string): string {
  return `${tenant}/${namespace}/${name}`;
}

const NAME_RE = /^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$/;

/** Whether `s` is a valid object name: lowercase DNS-label-like, 1 to 63 characters. */
export function isValidName(s: string): boolean {
  return NAME_RE.test(s);
}
