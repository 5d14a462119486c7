import assert from "node:assert/strict";
import { ValidationError } from "../common/errors.ts";
import {
  callRate,
  decodeStoredUserObject,
  decodeUserObject,
  DEFAULT_POLICY,
  encodeUserObject,
  type FunctionSpec,
  listPastBound,
  MAX_ANNOTATIONS,
  MAX_COMMANDS,
  MAX_ENVS,
  MAX_MOUNTS,
  resolvePolicy,
  sameWorker,
  userObjectToJson,
} from "./schemas.ts";
import { objectKey, parseKey } from "./keys.ts";

const fn = (object: unknown, extra: Record<string, unknown> = {}) => ({
  type: "function",
  tenant: "public",
  namespace: "demo",
  name: "ngram",
  object,
  ...extra,
});

Deno.test("FuncPolicy defaults are InferX's, and the platform's own fields' are filled in too", () => {
  assert.deepEqual(DEFAULT_POLICY, {
    min_replica: 0,
    max_replica: 1,
    standby_per_node: 1,
    parallel: 50,
    queue_len: 100,
    queue_timeout: 30,
    answer_timeout: 600,
    scaleout_policy: { wait_ratio: 0.1 },
    scalein_timeout: 1,
    priority: "normal",
  });
});

Deno.test("decodeUserObject() accepts InferX's function spec with {spec} and envs pairs", () => {
  const obj = decodeUserObject(fn({
    spec: {
      image: "inferx/ngram:1",
      commands: ["serve"],
      envs: [["A", "1"]],
      endpoint: { port: 8000, schema: "Http", probe: "/health" },
      resources: { CPU: 500, Mem: 256, GPU: { Type: "H100", Count: 2, vRam: 4000 } },
      standby: { gpu: "File", pageable: "Mem", pinned: "Mem" },
      policy: { Link: { objType: "funcpolicy", name: "fast" } },
    },
  }));
  assert.equal(obj.type, "function");
  if (obj.type !== "function") return;
  assert.deepEqual(obj.spec.envs, [["A", "1"]]);
  assert.deepEqual(obj.spec.resources.GPU, { Type: "H100", Count: 2, vRam: 4000 });
  assert.equal(obj.spec.standby.gpu, "File");
  assert.deepEqual(obj.spec.policy, { kind: "link", name: "fast" });
});

Deno.test("decodeUserObject() fills defaults and accepts envs as a map and an inline policy", () => {
  const obj = decodeUserObject(fn({
    image: "x",
    envs: { B: "2" },
    policy: { Obj: { max_replica: 3 } },
  }));
  if (obj.type !== "function") throw new Error("not a function");
  assert.deepEqual(obj.spec.envs, [["B", "2"]]);
  assert.deepEqual(obj.spec.resources, {
    CPU: 1000,
    Mem: 1024,
    GPU: { Type: "Any", Count: 0, vRam: 0 },
  });
  assert.equal(obj.spec.endpoint.probe, "/health");
  const policy = resolvePolicy(obj.spec, () => undefined);
  assert.equal(policy.max_replica, 3);
  assert.equal(policy.parallel, 50);
});

const invalid: [string, unknown, string][] = [
  ["missing image", fn({ spec: {} }), "image"],
  ["negative CPU", fn({ image: "x", resources: { CPU: -1 } }), "resources.CPU"],
  ["GPU without vRam", fn({ image: "x", resources: { GPU: { Count: 1 } } }), "resources.GPU.vRam"],
  ["bad probe", fn({ image: "x", endpoint: { probe: "health" } }), "endpoint.probe"],
  ["bad standby tier", fn({ image: "x", standby: { gpu: "Disk" } }), "standby.gpu"],
  ["unknown type", { ...fn({}), type: "widget" }, "type"],
  ["bad name", { ...fn({ image: "x" }), name: "Bad Name" }, "name"],
  [
    "policy min above max",
    {
      type: "funcpolicy",
      tenant: "public",
      namespace: "demo",
      name: "p",
      object: { min_replica: 3 },
    },
    "min_replica",
  ],
  [
    "a bad label key",
    fn({ metadata: { labels: { "a b": "x" } }, spec: { image: "x" } }),
    "metadata.labels.a b",
  ],
  [
    "a bad label value",
    fn({ metadata: { labels: { app: "-x" } }, spec: { image: "x" } }),
    "metadata.labels.app",
  ],
  ["metadata without spec", fn({ metadata: {}, image: "x" }), "metadata"],
  [
    "an unknown metadata field",
    fn({ metadata: { label: {} }, spec: { image: "x" } }),
    "metadata.label",
  ],
  [
    "a bad condition status",
    fn({ spec: { image: "x" }, status: { conditions: [{ type: "S", status: "Maybe" }] } }),
    "status.conditions.0.status",
  ],
  [
    "tenant outside system",
    { type: "tenant", tenant: "public", namespace: "system", name: "t" },
    "tenant",
  ],
  // A call could never reach a worker: its wait for one is what leases it.
  ["queue_len 0", fn({ image: "x", policy: { queue_len: 0 } }), "policy.queue_len"],
  ["a NUL in a command", fn({ image: "x", commands: ["sleep", "1\0"] }), "commands.1"],
  ["a NUL in an env value", fn({ image: "x", envs: [["A", "b\0"]] }), "envs"],
  ["'=' in an env name", fn({ image: "x", envs: { "A=B": "c" } }), "envs"],
  ["a probe with a space", fn({ image: "x", endpoint: { probe: "/a b" } }), "endpoint.probe"],
  [
    "a mount over the container's root",
    fn({ image: "x", mounts: [{ hostpath: "/data", mountpath: "//" }] }),
    "mounts.0.mountpath",
  ],
  [
    "a restore hook with a space",
    fn({ image: "x", endpoint: { restore_hook: "/a b" } }),
    "endpoint.restore_hook",
  ],
  [
    "a restore hook not a path",
    fn({ image: "x", endpoint: { restore_hook: "x" } }),
    "endpoint.restore_hook",
  ],
  ["a probe naming a host", fn({ image: "x", endpoint: { probe: "//h/x" } }), "endpoint.probe"],
  // The dashboard puts the sample's path in a curl line a viewer copies with their own key.
  ...["../../../../object/", "v1/%2e%2E/x", "v1/..", "..?x", "a%2Fb", "a\\b", "v1 x", 42].map((
    path,
  ): [string, unknown, string] => [
    `a sample path ${JSON.stringify(path)}`,
    fn({ image: "x", sample_query: { path } }),
    "sample_query.path",
  ]),
  [
    "an unknown key beside spec",
    fn({ spec: { image: "x" }, metdata: { labels: { a: "b" } } }),
    "metdata",
  ],
  [
    "a __proto__ label",
    JSON.parse(
      '{"type":"function","tenant":"p","namespace":"d","name":"f","object":' +
        '{"metadata":{"labels":{"__proto__":"x"}},"spec":{"image":"x"}}}',
    ),
    "object.metadata.labels.__proto__",
  ],
  [
    "a __proto__ key in a sample query",
    JSON.parse(
      '{"type":"function","tenant":"p","namespace":"d","name":"f","object":' +
        '{"spec":{"image":"x","sample_query":{"__proto__":{"a":1},"b":2}}}}',
    ),
    "object.spec.sample_query.__proto__",
  ],
  [
    "a rollout of a funcpolicy (only functions are rolled out)",
    {
      type: "funcpolicy",
      tenant: "p",
      namespace: "d",
      name: "cp",
      object: { spec: {}, rollout: "promote" },
    },
    "rollout",
  ],
  [
    "a rollout of a namespace",
    {
      type: "namespace",
      tenant: "p",
      namespace: "system",
      name: "d",
      object: { spec: {}, rollout: "rollback" },
    },
    "rollout",
  ],
];

for (const [title, input, field] of invalid) {
  Deno.test(`decodeUserObject() refuses ${title}, naming field ${field}`, () => {
    assert.throws(() => decodeUserObject(input), (err: unknown) => {
      assert.ok(err instanceof ValidationError);
      assert.equal(err.details?.field, field);
      assert.match(err.message, new RegExp(field.replaceAll(".", "\\.")));
      return true;
    });
  });
}

Deno.test("encodeUserObject() and decodeStoredUserObject() round-trip a function with its version and policy", () => {
  const obj = decodeUserObject(
    fn({ image: "x", policy: { Obj: { queue_len: 1, scalein_timeout: 0.5 } } }),
  );
  if (obj.type !== "function") throw new Error("not a function");
  obj.version = 7;
  const back = decodeStoredUserObject(encodeUserObject(obj), 9);
  assert.deepEqual(back, { ...obj, revision: 9 });
});

Deno.test("objectKey() and parseKey() follow /registry/{type}/{tenant}/{ns}/{name}", () => {
  const key = objectKey("function", "public", "demo", "ngram");
  assert.equal(key, "/registry/function/public/demo/ngram");
  assert.deepEqual(parseKey(key), {
    type: "function",
    tenant: "public",
    namespace: "demo",
    name: "ngram",
  });
  assert.equal(parseKey("/registry/function/a/b"), undefined);
});

Deno.test("a linked policy survives storage as a Link", () => {
  const obj = decodeUserObject(fn({ image: "x", policy: { Link: { name: "fast" } } }));
  const back = decodeStoredUserObject(encodeUserObject(obj), 2);
  assert.equal(back.type === "function" && back.spec.policy?.kind, "link");
});

Deno.test("metadata and status sit beside the spec, survive storage, and are left out when empty", () => {
  const obj = decodeUserObject(fn({
    metadata: { labels: { app: "demo", "inferx.io/team": "nlp" }, annotations: { note: "a b" } },
    spec: { image: "x" },
    status: { conditions: [{ type: "Schedulable", status: "False", reason: "R", message: "m" }] },
  }));
  const back = decodeStoredUserObject(encodeUserObject(obj), 3);
  assert.deepEqual(back.metadata, obj.metadata);
  assert.equal(back.type === "function" && back.status?.conditions[0].reason, "R");
  const json = userObjectToJson(back) as { object: Record<string, unknown> };
  assert.deepEqual(Object.keys(json.object), ["metadata", "spec", "status"]);
  const bare = decodeUserObject(fn({ metadata: { labels: {} }, spec: { image: "x" } }));
  assert.deepEqual(Object.keys(JSON.parse(encodeUserObject(bare)).object), ["spec"]);
});

Deno.test("sameWorker() tells worker changes (new version) from policy and sample_query changes", () => {
  const spec = (o: Record<string, unknown>): FunctionSpec => {
    const d = decodeUserObject(fn({ image: "x", ...o }));
    if (d.type !== "function") throw new Error("not a function");
    return d.spec;
  };
  const base = spec({ policy: { Obj: { max_replica: 1 } }, envs: { A: "1" } });
  const cases: [string, Record<string, unknown>, boolean][] = [
    ["the same spec with defaults spelt out", {
      policy: { Obj: { max_replica: 1 } },
      envs: [["A", "1"]],
      resources: { CPU: 1000, Mem: 1024 },
    }, true],
    ["an inline policy change", {
      policy: { Obj: { max_replica: 5, parallel: 2 } },
      envs: { A: "1" },
    }, true],
    ["a linked policy instead", { policy: { Link: { name: "p" } }, envs: { A: "1" } }, true],
    ["a sample_query", { sample_query: { path: "x" }, envs: { A: "1" } }, true],
    ["an env change", { envs: { A: "2" } }, false],
    ["a resources change", { envs: { A: "1" }, resources: { CPU: 500 } }, false],
    ["a startup_timeout change", { envs: { A: "1" }, startup_timeout: 5 }, false],
    ["a standby change", { envs: { A: "1" }, standby: { gpu: "File" } }, false],
  ];
  for (const [what, o, same] of cases) assert.equal(sameWorker(base, spec(o)), same, what);
  // Environments in another order: the same workers, whichever form they are written in.
  const two = spec({ envs: { A: "1", B: "2" } });
  assert.equal(sameWorker(two, spec({ envs: { B: "2", A: "1" } })), true, "a mapping reordered");
  assert.deepEqual(spec({ envs: { B: "2", A: "1" } }).envs, [["A", "1"], ["B", "2"]]);
  assert.equal(sameWorker(two, spec({ envs: [["B", "2"], ["A", "1"]] })), true, "pairs reordered");
  // Pairs of one name keep their order: the last one wins.
  const dup = spec({ envs: [["A", "1"], ["A", "2"]] });
  assert.equal(sameWorker(dup, spec({ envs: [["A", "2"], ["A", "1"]] })), false, "A=2 vs A=1");
});

Deno.test("a mistake inside a policy is refused by name, never read as the default policy", () => {
  const refused: [unknown, RegExp][] = [
    [{ Obj: { min_replica: 2, max_replica: 1 } }, /policy\.Obj\.min_replica: min_replica must not/],
    [{ Obj: { max_replica: "6" } }, /policy\.Obj\.max_replica: .*expected number/],
    [{ Obj: { max_replicas: 9 } }, /policy\.Obj: Unrecognized key: "max_replicas"/],
    [{ Obj: { scaleout_policy: { wait_ratios: 1 } } }, /Unrecognized key: "wait_ratios"/],
    [{ Obj: { traffic: [{ version: 1, percent: 100, weight: 1 }] } }, /Unrecognized key/],
    [{ max_replica: 0 }, /policy\.max_replica: Too small/],
    [{ Link: "name" }, /policy\.Link: .*expected object/],
    [{ Link: { name: "p" }, Obj: {} }, /policy: Unrecognized key: "Obj"/],
    [{ Link: { name: "p", tenant: "other" } }, /links to a funcpolicy of its own namespace/],
    [{ Link: { name: "p", namespace: "other" } }, /links to a funcpolicy of its own namespace/],
  ];
  for (const [policy, message] of refused) {
    assert.throws(
      () => decodeUserObject(fn({ spec: { image: "x", policy } })),
      (e: unknown) => e instanceof ValidationError && message.test(e.message),
      JSON.stringify(policy),
    );
  }
  const ok = (policy: unknown) =>
    (decodeUserObject(fn({ spec: { image: "x", policy } })) as { spec: FunctionSpec }).spec.policy;
  assert.deepEqual(ok({ Obj: { max_replica: 3 } }), ok({ max_replica: 3 }));
  assert.equal(
    (ok({ max_replica: 3 }) as { policy: { max_replica: number } }).policy.max_replica,
    3,
  );
  assert.deepEqual(
    ok({ Link: { objType: "funcpolicy", tenant: "public", namespace: "demo", name: "p" } }),
    { kind: "link", name: "p" },
  );
});

Deno.test("a tenant quota with an unknown field is refused, not stored as unlimited", () => {
  const tenant = (quota: unknown) => ({
    type: "tenant",
    tenant: "system",
    namespace: "system",
    name: "acme",
    object: { spec: { quota } },
  });
  assert.throws(
    () => decodeUserObject(tenant({ max_gpus: 4, max_replicas: 8 })),
    /quota\.max_gpus: Unrecognized keys: "max_gpus", "max_replicas"/,
  );
  const o = decodeUserObject(tenant({ max_gpu: 4 }));
  assert.deepEqual(o.type === "tenant" && o.spec.quota, { max_gpu: 4 });
  // A call rate: positive, a burst a whole number of calls.
  for (
    const [quota, field] of [
      [{ max_calls_per_s: 0 }, "max_calls_per_s"],
      [{ max_calls_per_s: -1 }, "max_calls_per_s"],
      [{ max_calls_per_s: "10" }, "max_calls_per_s"],
      [{ max_calls_per_s: 2e6 }, "max_calls_per_s"],
      [{ max_calls_per_s: 5, max_call_burst: 0 }, "max_call_burst"],
      [{ max_calls_per_s: 5, max_call_burst: 2.5 }, "max_call_burst"],
      [{ max_call_burst: 5 }, "max_call_burst"],
      [{ max_calls_per_s: 1e-9 }, "max_calls_per_s"],
    ] as const
  ) {
    assert.throws(() => decodeUserObject(tenant(quota)), new RegExp(`quota\\.${field}`));
  }
  const rated = decodeUserObject(tenant({ max_calls_per_s: 0.5, max_call_burst: 3 }));
  assert.deepEqual(rated.type === "tenant" && callRate(rated.spec.quota!), { perS: 0.5, burst: 3 });
  assert.deepEqual(callRate({ max_calls_per_s: 2.5 }), { perS: 2.5, burst: 3 });
  assert.deepEqual(callRate({ max_calls_per_s: 0.1 }), { perS: 0.1, burst: 1 });
  assert.equal(callRate({ max_gpu: 1 }), undefined);
});

Deno.test("an object nested deeper than MAX_OBJECT_DEPTH is refused before it is read", () => {
  const deep = JSON.parse("[".repeat(5000) + "]".repeat(5000));
  for (const spec of [{ a: deep }, { image: "x", sample_query: { q: deep } }]) {
    assert.throws(
      () =>
        decodeUserObject({
          type: "namespace",
          tenant: "public",
          namespace: "system",
          name: "d",
          object: { spec },
        }),
      (e: unknown) => e instanceof ValidationError && /more than 64 levels deep/.test(e.message),
    );
  }
  const nested = (n: number): unknown => n === 0 ? 1 : { a: nested(n - 1) };
  // The envelope, `object` and `spec` take three levels.
  decodeUserObject({
    type: "namespace",
    tenant: "public",
    namespace: "system",
    name: "d",
    object: { spec: { x: nested(60) } },
  });
});

Deno.test("a function spec with an unknown field, a relative mount or vRam without GPUs is refused", () => {
  const refused: [unknown, RegExp][] = [
    [{ image: "x", env: [["A", "1"]] }, /: env: Unrecognized key: "env"/],
    [{ image: "x", resources: { cpu: 250 } }, /resources\.cpu: Unrecognized key: "cpu"/],
    [{ image: "x", endpoint: { port: 80, path: "/" } }, /endpoint\.path: Unrecognized key: "path"/],
    [{ image: "x", mounts: [{ hostpath: "/d", mountpath: "rel" }] }, /mountpath: must be an abs/],
    [{ image: "x", mounts: [{ hostpath: "d", mountpath: "/d" }] }, /hostpath: must be an abs/],
    [{ image: "x", resources: { GPU: { vRam: 1024 } } }, /GPU\.Count: Count must be set/],
  ];
  for (const [spec, message] of refused) {
    assert.throws(
      () => decodeUserObject(fn({ spec })),
      (e: unknown) => e instanceof ValidationError && message.test(e.message),
      JSON.stringify(spec),
    );
  }
  decodeUserObject(fn({ spec: { image: "x", mounts: [{ hostpath: "/d", mountpath: "/m" }] } }));
});

Deno.test("a function spec a Docker node would refuse at every start is refused at once", () => {
  const refused: [unknown, RegExp][] = [
    [{ image: "Not A/Valid:Ref!!" }, /image: must be an image reference/],
    [{ image: "ghcr.io/Org/model" }, /image: must be an image reference/],
    [{ image: "a:b:c" }, /image: must be an image reference/],
    [{ image: "x", resources: { Mem: 4 } }, /resources\.Mem: must be at least 6/],
    [{ image: "x", resources: { CPU: 5 } }, /resources\.CPU: must be at least 10/],
    [{ image: "MyOrg/model:v1" }, /image: must be an image reference/],
    [{ image: `r/${"a".repeat(511)}` }, /image: must be an image reference/],
  ];
  for (const [spec, message] of refused) {
    assert.throws(
      () => decodeUserObject(fn({ spec })),
      (e: unknown) => e instanceof ValidationError && message.test(e.message),
      JSON.stringify(spec),
    );
  }
  for (
    const image of [
      "x",
      "inferx/ngram:latest",
      "localhost:5000/team/model:1.0",
      "nvcr.io/nvidia/pytorch:24.01-py3",
      `registry.example.com/m@sha256:${"0a".repeat(32)}`,
    ]
  ) {
    decodeUserObject(fn({ spec: { image, resources: { CPU: 10, Mem: 6 } } }));
  }
});

Deno.test("a function spec's commands, envs and mounts are bounded in a write, not in storage", () => {
  const many = (n: number, f: (i: number) => unknown) => Array.from({ length: n }, (_, i) => f(i));
  const lists: [string, (n: number) => unknown, number][] = [
    ["commands", (n) => many(n, (i) => `a${i}`), MAX_COMMANDS],
    ["envs", (n) => many(n, (i) => [`K${i}`, "v"]), MAX_ENVS],
    [
      "envs",
      (n) => Object.fromEntries(many(n, (i) => [`K${i}`, "v"]) as [string, string][]),
      MAX_ENVS,
    ],
    ["mounts", (n) => many(n, (i) => ({ hostpath: `/h${i}`, mountpath: `/m${i}` })), MAX_MOUNTS],
  ];
  for (const [field, make, most] of lists) {
    decodeUserObject(fn({ spec: { image: "x", [field]: make(most) } }));
    assert.throws(
      () => decodeUserObject(fn({ spec: { image: "x", [field]: make(most + 1) } })),
      (e: unknown) =>
        e instanceof ValidationError && e.details?.field === field &&
        e.message.includes(`${field}: at most ${most} entries (got ${most + 1})`),
      field,
    );
    // Stored before the bound, it is read as it was.
    const stored = JSON.stringify({
      ...fn({ spec: { image: "x", [field]: make(most + 1) } }),
      version: 1,
    });
    assert.equal(decodeStoredUserObject(stored, 2).type, "function");
  }
});

Deno.test("listPastBound() counts a write's lists as sent, and leaves a list stored past its bound to the checks", () => {
  const pairs = (n: number) => Array.from({ length: n }, (_, i) => [`K${i}`, "v"]);
  const input = (object: unknown) => ({
    type: "function",
    tenant: "t",
    namespace: "n",
    name: "f",
    object,
  });
  assert.equal(listPastBound(input({ image: "x", envs: pairs(MAX_ENVS) })), undefined);
  assert.match(
    listPastBound(input({ image: "x", envs: pairs(MAX_ENVS + 1) }))!.message,
    /^Invalid function t\/n\/f: envs: at most 1000 entries \(got 1001\)$/,
  );
  assert.match(
    listPastBound(input({ spec: { envs: Object.fromEntries(pairs(MAX_ENVS + 1)) } }))!.message,
    /envs: at most/,
  );
  const annotations = Object.fromEntries(pairs(MAX_ANNOTATIONS + 1));
  const withAnnotations = input({ metadata: { annotations }, spec: { image: "x" } });
  assert.equal(listPastBound(withAnnotations)!.details?.field, "metadata.annotations");
  assert.equal(
    listPastBound({ ...withAnnotations, type: "namespace" })!.details?.field,
    "metadata.annotations",
  );
  // A spec's lists count only for a function; what is not a list counts as none.
  assert.equal(
    listPastBound({ ...input({ envs: pairs(MAX_ENVS + 1) }), type: "tenant" }),
    undefined,
  );
  assert.equal(listPastBound(input({ envs: "x".repeat(5000), commands: 7 })), undefined);
  // Stored past the bound (before it existed): the write goes on to the full checks.
  const prev = decodeStoredUserObject(
    JSON.stringify({
      ...input({ metadata: { annotations }, spec: { image: "x", envs: pairs(1200) } }),
      version: 1,
    }),
    1,
  );
  assert.equal(listPastBound(withAnnotations, prev), undefined);
  assert.equal(listPastBound(input({ image: "x", envs: pairs(1100) }), prev), undefined);
  assert.match(
    listPastBound(input({ image: "x", mounts: Array(MAX_MOUNTS + 1).fill({}) }), prev)!.message,
    /mounts/,
  );
});

Deno.test("a stored object nested deeper than the input limit stays readable", () => {
  const nested = (n: number): unknown => n === 0 ? 1 : [nested(n - 1)];
  const value = JSON.stringify({
    type: "namespace",
    tenant: "public",
    namespace: "system",
    name: "old",
    object: { spec: { a: nested(100) } },
  });
  const o = decodeStoredUserObject(value, 3);
  assert.equal(o.name, "old");
  assert.equal(o.revision, 3);
});

Deno.test("a stored object a later rule refuses stays readable: only a write must meet it", () => {
  const stored = JSON.stringify({
    type: "function",
    tenant: "p",
    namespace: "d",
    name: "f",
    object: {
      spec: {
        image: "x",
        commands: ["a\u0000b"],
        endpoint: { probe: "//healthz" },
        policy: { Obj: { queue_len: 0 } },
      },
    },
    version: 3,
  });
  const fn = decodeStoredUserObject(stored, 7);
  assert.equal(fn.type, "function");
  assert.throws(() => decodeUserObject(JSON.parse(stored)), /queue_len: must be at least 1/);
});

Deno.test("decodeUserObject() says the same least CPU and memory whatever the value below them", () => {
  for (
    const [resources, message] of [
      [{ CPU: 0 }, /resources\.CPU: must be at least 10 \(millicores\)$/],
      [{ CPU: 5 }, /resources\.CPU: must be at least 10 \(millicores\)$/],
      [{ Mem: 0 }, /resources\.Mem: must be at least 6 \(MB\)$/],
      [{ Mem: 3 }, /resources\.Mem: must be at least 6 \(MB\)$/],
    ] as const
  ) {
    assert.throws(() => decodeUserObject(fn({ image: "x", resources })), message);
  }
});
