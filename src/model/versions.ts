/**
 * Function versions and the traffic split between them (docs/traffic.md).
 *
 * A function's *spec* defines its worker; every change of it is a new
 * version, numbered upwards and never reused. Its *policy* decides which
 * versions serve calls: by default the newest takes every call and older
 * versions drain; `canary_percent` gives the newest that share and leaves the
 * rest to the *stable* version (the last one promoted); `traffic` names the
 * share of each version outright. The state service keeps the specs of the
 * older versions the split still names, so that their pods can be placed.
 * Promote makes the newest version the stable one; roll back makes the stable
 * version the function's again (its spec and number), so its warm pods keep
 * serving and the newest drains.
 *
 * Pure rules, used by the state service (what to keep), the scheduler (which
 * versions get pods) and the gateway (which version takes a call).
 *
 * @module
 */
import { ConflictError, ValidationError } from "../common/errors.ts";
import type { FuncPolicy, FunctionSpec, OlderVersion, UserObject } from "./schemas.ts";

/** A function object as stored. */
export type FunctionObject = Extract<UserObject, { type: "function" }>;

/** One version's share of calls. */
export interface VersionShare {
  version: number;
  /** Percent of calls; a version with 0 serves none and drains. */
  percent: number;
}

/**
 * Which versions take calls, and what share each: from `traffic`, from
 * `canary_percent` (newest and stable), or the newest alone. Versions whose
 * spec is no longer kept, and versions with no share, are left out.
 */
export function trafficSplit(f: FunctionObject, policy: FuncPolicy): VersionShare[] {
  const kept = (v: number) => v === f.version || f.olderVersions?.some((o) => o.version === v);
  let split: VersionShare[];
  const stable = f.stableVersion ?? f.version;
  if (policy.traffic) {
    split = policy.traffic.map((t) => ({ version: t.version, percent: t.percent }));
  } else if (policy.canary_percent !== undefined && stable !== f.version) {
    split = [
      { version: f.version, percent: policy.canary_percent },
      { version: stable, percent: 100 - policy.canary_percent },
    ];
  } else split = [];
  split = split.filter((s) => s.percent > 0 && kept(s.version));
  return split.length ? split : [{ version: f.version, percent: 100 }];
}

/** Whether `policy` splits calls between versions (so a new version does not take them all). */
function splits(policy: FuncPolicy): boolean {
  return policy.traffic !== undefined || policy.canary_percent !== undefined;
}

const where = (f: FunctionObject) => `${f.tenant}/${f.namespace}/${f.name}`;

/** The specs of every version `prev` keeps, by number. */
function keptSpecs(prev: FunctionObject): Map<number, FunctionSpec> {
  const m = new Map<number, FunctionSpec>([[prev.version, prev.spec]]);
  for (const o of prev.olderVersions ?? []) m.set(o.version, o.spec);
  return m;
}

/**
 * The versions of `next`, a write of the function `prev` was (undefined: a
 * new function) under `policy` (its resolved policy). A write with `bump`
 * (today: every update) gives the spec a new version; the stable version
 * stays while the policy splits calls, else becomes the new one. Older
 * versions are kept while the split names them. Throws a
 * {@linkcode ValidationError} when `traffic` names a version not kept.
 */
export function nextVersions(
  prev: FunctionObject | undefined,
  next: FunctionObject,
  policy: FuncPolicy,
  bump = true,
): FunctionObject {
  if (!prev) {
    const other = policy.traffic?.find((t) => t.version !== 1);
    if (other) {
      throw new ValidationError(
        `Invalid function ${
          where(next)
        }: traffic names version ${other.version}, which a new function does not have (its one version is 1)`,
        "traffic",
      );
    }
    return { ...next, version: 1, stableVersion: 1, lastVersion: 1, olderVersions: undefined };
  }
  const last = Math.max(prev.version, prev.lastVersion ?? 0);
  const version = bump ? last + 1 : prev.version;
  const stable = splits(policy) ? prev.stableVersion ?? prev.version : version;
  const specs = keptSpecs(prev);
  const wanted = new Set<number>();
  if (stable !== version) wanted.add(stable);
  for (const t of policy.traffic ?? []) {
    if (t.version === version) continue;
    if (!specs.has(t.version)) {
      throw new ValidationError(
        `Invalid function ${where(next)}: traffic names version ${t.version}, which is not kept (${
          [...new Set([...specs.keys(), version])].sort((a, b) => a - b).join(", ")
        } are)`,
        "traffic",
      );
    }
    wanted.add(t.version);
  }
  const older: OlderVersion[] = [...wanted].sort((a, b) => b - a)
    .flatMap((v) => specs.has(v) ? [{ version: v, spec: specs.get(v)! }] : []);
  return {
    ...next,
    version,
    stableVersion: older.some((o) => o.version === stable) ? stable : version,
    lastVersion: Math.max(last, version),
    olderVersions: older.length ? older : undefined,
    rollout: undefined,
  };
}

/** `spec` with its inline policy's `traffic` removed (a rollout ends an explicit split). */
function withoutTraffic(spec: FunctionSpec): FunctionSpec {
  if (spec.policy?.kind !== "inline" || !spec.policy.policy.traffic) return spec;
  const { traffic: _, ...policy } = spec.policy.policy;
  return { ...spec, policy: { kind: "inline", policy } };
}

/**
 * The function after a rollout of `prev` under `policy`. `promote`: the
 * newest version takes every call and becomes the stable one. `rollback`:
 * the stable version (or, with `traffic`, the older version with the
 * largest share) becomes the function's again, spec and number, keeping the
 * current policy; the newest drains. An inline `traffic` split ends either
 * way. Throws a {@linkcode ConflictError} when there is nothing to do.
 */
export function rolloutVersions(
  prev: FunctionObject,
  action: "promote" | "rollback",
  policy: FuncPolicy,
): FunctionObject {
  const split = trafficSplit(prev, policy);
  const last = Math.max(prev.version, prev.lastVersion ?? 0);
  const done = { ...prev, rollout: undefined, lastVersion: last, revision: prev.revision };
  if (action === "promote") {
    // Settled: the newest takes every call, is the stable one, and keeps no older version.
    const settled = split.length === 1 && split[0].version === prev.version && !policy.traffic &&
      (prev.stableVersion ?? prev.version) === prev.version && !prev.olderVersions?.length;
    if (settled) {
      throw new ConflictError(
        `Cannot promote ${where(prev)}: version ${prev.version} already takes every call`,
      );
    }
    return {
      ...done,
      spec: withoutTraffic(prev.spec),
      stableVersion: prev.version,
      olderVersions: undefined,
    };
  }
  const stable = prev.stableVersion ?? prev.version;
  // A `traffic` split names who serves: the older version with the largest share (the stable
  // one stays the old one under it, and may have none); else a canary's stable version.
  const target = policy.traffic
    ? split.filter((s) => s.version !== prev.version).sort((a, b) => b.percent - a.percent)[0]
      ?.version
    : stable !== prev.version
    ? stable
    : undefined;
  const spec = target === undefined ? undefined : keptSpecs(prev).get(target);
  if (target === undefined || !spec) {
    throw new ConflictError(
      `Cannot roll back ${
        where(prev)
      }: no older version serves calls (version ${prev.version} was promoted or is the only one)`,
    );
  }
  return {
    ...done,
    // The worker of the older version, under the policy in force now.
    spec: withoutTraffic({ ...spec, policy: prev.spec.policy }),
    version: target,
    stableVersion: target,
    olderVersions: undefined,
  };
}

/** The load of one function version in one gateway, as the gateway reports it in heartbeats. */
export interface VersionLoad {
  version: number;
  /** Calls waiting for a worker slot. */
  queued: number;
  /** How long the oldest of them has waited (ms). */
  waitMs: number;
  /** Calls being answered. */
  inflight: number;
  /** Tokens the calls being answered asked for (`max_tokens`). */
  inflightTokens: number;
  /** Workers of this version the gateway holds (not draining). */
  workers: number;
}

/**
 * How many workers `tokens` in flight call for at `per` a worker
 * (`scaleout_policy.inflight_tokens`), no more than `calls` (in flight and
 * queued): a call runs on one worker, so one asking for a billion tokens
 * calls for one. The scheduler's advice and a gateway's hold on idle workers
 * both go by it.
 */
export function workersForTokens(tokens: number, per: number, calls: number): number {
  return Math.min(Math.ceil(tokens / per), calls);
}

/** The spec of version `v` of `f`, when kept. */
export function specOfVersion(f: FunctionObject, v: number): FunctionSpec | undefined {
  if (v === f.version) return f.spec;
  return f.olderVersions?.find((o) => o.version === v)?.spec;
}
