import assert from "node:assert/strict";
import { ConflictError, ValidationError } from "../common/errors.ts";
import { decodeStoredUserObject, encodeUserObject, FuncPolicySchema } from "./schemas.ts";
import {
  type FunctionObject,
  nextVersions,
  rolloutVersions,
  specOfVersion,
  trafficSplit,
} from "./versions.ts";

const spec = (image: string, policy: Record<string, unknown> = {}) =>
  ({
    image,
    commands: [],
    envs: [],
    mounts: [],
    endpoint: { port: 80, schema: "Http", probe: "/health" },
    resources: { CPU: 1000, Mem: 1024, GPU: { Type: "Any", Count: 0, vRam: 0 } },
    standby: { gpu: "Mem", pageable: "Mem", pinned: "Mem" },
    startup_timeout: 120,
    policy: { kind: "inline", policy: FuncPolicySchema.parse(policy) },
  }) as FunctionObject["spec"];

const fn = (
  image: string,
  versions: Partial<FunctionObject> = {},
  policy = {},
): FunctionObject => ({
  type: "function",
  tenant: "t",
  namespace: "n",
  name: "f",
  revision: 1,
  spec: spec(image, policy),
  version: 1,
  ...versions,
});

const policy = (p: Record<string, unknown>) => FuncPolicySchema.parse(p);

Deno.test("trafficSplit() decides which versions take calls", () => {
  const older = [{ version: 2, spec: spec("b") }, { version: 1, spec: spec("a") }];
  const f = fn("c", { version: 3, stableVersion: 2, olderVersions: older });
  const cases: [string, Record<string, unknown>, [number, number][]][] = [
    ["no split: the newest alone", {}, [[3, 100]]],
    ["a canary: the newest its share, the stable one the rest", { canary_percent: 10 }, [
      [3, 10],
      [2, 90],
    ]],
    ["a canary of 0: the stable one alone", { canary_percent: 0 }, [[2, 100]]],
    ["explicit traffic", { traffic: [{ version: 1, percent: 30 }, { version: 3, percent: 70 }] }, [
      [1, 30],
      [3, 70],
    ]],
    ["a version not kept is left out", {
      traffic: [{ version: 9, percent: 50 }, { version: 3, percent: 50 }],
    }, [[3, 50]]],
  ];
  for (const [name, p, want] of cases) {
    assert.deepEqual(
      trafficSplit(f, policy(p)).map((s) => [s.version, s.percent]),
      want,
      name,
    );
  }
  assert.deepEqual(
    trafficSplit(fn("a", { version: 4, stableVersion: 4 }), policy({ canary_percent: 10 })),
    [{ version: 4, percent: 100 }],
    "a canary policy with nothing promoted before: the newest alone",
  );
});

Deno.test("nextVersions() numbers versions upwards and keeps the older ones the split names", () => {
  const created = nextVersions(undefined, fn("a"), policy({}));
  assert.deepEqual([created.version, created.stableVersion, created.lastVersion], [1, 1, 1]);

  // No split: the new version is stable at once, nothing older kept.
  const plain = nextVersions(created, fn("b"), policy({}));
  assert.deepEqual([plain.version, plain.stableVersion, plain.olderVersions], [2, 2, undefined]);

  // A canary: version 1 stays stable and keeps its spec.
  const canary = nextVersions(created, fn("b"), policy({ canary_percent: 10 }));
  assert.deepEqual([canary.version, canary.stableVersion], [2, 1]);
  assert.equal(specOfVersion(canary, 1)?.image, "a");
  assert.equal(specOfVersion(canary, 2)?.image, "b");

  // Another version during the canary: 1 stays stable, 2 is dropped (it drains).
  const third = nextVersions(canary, fn("c"), policy({ canary_percent: 10 }));
  assert.deepEqual(
    [third.version, third.stableVersion, third.olderVersions?.map((o) => o.version)],
    [3, 1, [1]],
  );

  // Explicit traffic may name any kept version, and the one being made.
  const pinned = nextVersions(
    third,
    fn("d"),
    policy({
      traffic: [{ version: 1, percent: 20 }, { version: 3, percent: 30 }, {
        version: 4,
        percent: 50,
      }],
    }),
  );
  assert.deepEqual(pinned.olderVersions?.map((o) => o.version), [3, 1]);
  assert.throws(
    () => nextVersions(canary, fn("x"), policy({ traffic: [{ version: 7, percent: 100 }] })),
    (e: ValidationError) =>
      e instanceof ValidationError && /version 7, which is not kept/.test(e.message),
  );
  // The same spec again (no new version): each kept version named once.
  assert.throws(
    () => nextVersions(third, fn("c"), policy({ traffic: [{ version: 9, percent: 100 }] }), false),
    (e: ValidationError) => /version 9, which is not kept \(1, 3 are\)/.test(e.message),
  );
});

Deno.test("rolloutVersions(): promote ends the canary, rollback returns to the stable version", () => {
  const p = policy({ canary_percent: 10 });
  const canary = nextVersions(
    nextVersions(undefined, fn("a"), p),
    fn("b", {}, { canary_percent: 10 }),
    p,
  );

  const promoted = rolloutVersions(canary, "promote", p);
  assert.deepEqual([promoted.version, promoted.stableVersion, promoted.olderVersions], [
    2,
    2,
    undefined,
  ]);
  assert.deepEqual(trafficSplit(promoted, p), [{ version: 2, percent: 100 }]);
  assert.throws(() => rolloutVersions(promoted, "promote", p), ConflictError);
  assert.throws(() => rolloutVersions(promoted, "rollback", p), /no older version serves/);

  const back = rolloutVersions(canary, "rollback", p);
  assert.deepEqual([back.version, back.stableVersion, back.lastVersion], [1, 1, 2]);
  assert.equal(back.spec.image, "a", "the stable version's worker");
  assert.deepEqual(back.spec.policy, canary.spec.policy, "under the policy in force");
  // The next version is numbered above every version given so far.
  assert.equal(nextVersions(back, fn("c"), p).version, 3);
});

Deno.test("promote settles a function whose split ended without it: stable and older versions go", () => {
  const p = policy({ canary_percent: 20 });
  const canary = nextVersions(nextVersions(undefined, fn("a"), p), fn("b"), p);
  // The canary taken off the policy (a linked funcpolicy): the newest takes every call, but
  // the function still names version 1 stable and keeps its spec.
  const none = policy({});
  assert.deepEqual(trafficSplit(canary, none), [{ version: 2, percent: 100 }]);
  const promoted = rolloutVersions(canary, "promote", none);
  assert.deepEqual([promoted.stableVersion, promoted.olderVersions], [2, undefined]);
  assert.throws(() => rolloutVersions(promoted, "promote", none), ConflictError);
  // Set again, a canary then splits nothing until the next version.
  assert.deepEqual(trafficSplit(promoted, p), [{ version: 2, percent: 100 }]);
});

Deno.test("a new function's traffic may name its one version only", () => {
  const only = policy({ traffic: [{ version: 1, percent: 100 }] });
  assert.equal(nextVersions(undefined, fn("a"), only).version, 1);
  for (const v of [2, 7]) {
    const p = policy({ traffic: [{ version: v, percent: 100 }] });
    assert.throws(
      () => nextVersions(undefined, fn("a"), p),
      (e: unknown) =>
        e instanceof ValidationError && e.details?.field === "traffic" &&
        new RegExp(`names version ${v}, which a new function does not have`).test(e.message),
    );
  }
});

Deno.test("a rollout of an explicit split ends it: traffic leaves the inline policy", () => {
  const traffic = { traffic: [{ version: 1, percent: 75 }, { version: 2, percent: 25 }] };
  const v1 = nextVersions(undefined, fn("a"), policy({}));
  const split = nextVersions(v1, fn("b", {}, traffic), policy(traffic));
  assert.deepEqual(trafficSplit(split, policy(traffic)).map((s) => s.version), [1, 2]);
  const back = rolloutVersions(split, "rollback", policy(traffic));
  assert.equal(back.version, 1, "the older version with the larger share");
  assert.equal(back.spec.policy?.kind === "inline" && back.spec.policy.policy.traffic, undefined);
  const promoted = rolloutVersions(split, "promote", policy(traffic));
  assert.equal(promoted.version, 2);
  assert.equal(
    promoted.spec.policy?.kind === "inline" && promoted.spec.policy.policy.traffic,
    undefined,
  );
});

Deno.test("a rollback under a traffic split goes to the older version with the largest share, not to the stable one", () => {
  const v1 = nextVersions(undefined, fn("a"), policy({}));
  const t2 = { traffic: [{ version: 1, percent: 50 }, { version: 2, percent: 50 }] };
  const v2 = nextVersions(v1, fn("b", {}, t2), policy(t2));
  const t3 = {
    traffic: [{ version: 1, percent: 10 }, { version: 2, percent: 60 }, {
      version: 3,
      percent: 30,
    }],
  };
  const v3 = nextVersions(v2, fn("c", {}, t3), policy(t3));
  assert.equal(v3.stableVersion, 1, "a split keeps the stable version");
  const back = rolloutVersions(v3, "rollback", policy(t3));
  assert.deepEqual([back.version, back.spec.image, back.stableVersion], [2, "b", 2]);
  // The split took the stable version out: no older version serves, nothing to roll back to.
  const only2 = { traffic: [{ version: 2, percent: 100 }] };
  const out = nextVersions(v1, fn("b", {}, only2), policy(only2));
  assert.equal(out.stableVersion, 1);
  assert.throws(
    () => rolloutVersions(out, "rollback", policy(only2)),
    (e: unknown) => e instanceof ConflictError && /no older version serves/.test(e.message),
  );
});

Deno.test("versions survive the store: stable, last and older versions with their specs", () => {
  const p = policy({ canary_percent: 10 });
  const canary = nextVersions(
    nextVersions(undefined, fn("a"), p),
    fn("b", {}, { canary_percent: 10 }),
    p,
  );
  const back = decodeStoredUserObject(encodeUserObject(canary), 9) as FunctionObject;
  assert.deepEqual(
    [back.version, back.stableVersion, back.lastVersion, specOfVersion(back, 1)?.image],
    [2, 1, 2, "a"],
  );
});
