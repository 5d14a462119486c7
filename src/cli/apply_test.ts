import assert from "node:assert/strict";
import { fixtureTests } from "../common/testing.ts";
import { gatewayFixture } from "../gateway/testing.ts";
import { type Io } from "./_shared.ts";
import { sendTo } from "./testing.ts";
import { applyObjects, type ApplyOptions, diffObjects } from "./apply.ts";

/** An `Io` that records lines and answers questions with `answer`. */
function recorder(answer = "") {
  const out: string[] = [];
  const err: string[] = [];
  const asked: string[] = [];
  const io: Io = {
    out: (s) => out.push(s),
    err: (s) => err.push(s),
    ask: (q) => (asked.push(q), Promise.resolve(answer)),
  };
  return { io, out, err, asked };
}

const fn = (name: string, spec: Record<string, unknown>, labels?: Record<string, string>) => ({
  type: "function",
  tenant: "t",
  namespace: "n",
  name,
  object: { ...(labels ? { metadata: { labels } } : {}), spec: { image: "x", ...spec } },
});

/** A gateway fixture, a temporary directory, and `apply`/`diff` against them. */
async function setup() {
  const f = await gatewayFixture();
  const dir = await Deno.makeTempDir({ prefix: "inferx-apply-" });
  const send = sendTo(f.app);
  const write = (file: string, objs: unknown[]) =>
    Deno.writeTextFile(`${dir}/${file}`, JSON.stringify(objs));
  const apply = async (
    options: ApplyOptions = {},
    answer = "",
    source: string | string[] = dir,
  ) => {
    const r = recorder(answer);
    await applyObjects({ send, io: r.io }, Array.isArray(source) ? source : [source], options);
    return r;
  };
  const diff = async (options: ApplyOptions = {}) => {
    const r = recorder();
    const changes = await diffObjects({ send, io: r.io }, [dir], options);
    return { ...r, changes };
  };
  const get = async (name: string) => (await send("GET", `/object/function/t/n/${name}`)).json;
  return {
    f,
    dir,
    write,
    apply,
    diff,
    get,
    async dispose() {
      await f.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

const t = fixtureTests("ctl", setup);

t("apply twice: the second says unchanged and keeps the revision and the version", async (s) => {
  await s.write("a.json", [fn("g", { policy: { Obj: { max_replica: 1 } } })]);
  assert.deepEqual((await s.apply()).out, ["created function t/n/g"]);
  const first = await s.get("g");
  assert.equal(first.object.metadata.annotations["inferx.io/applied-by"], "ctl");
  assert.deepEqual((await s.apply()).out, ["unchanged function t/n/g"]);
  const second = await s.get("g");
  assert.deepEqual([second.revision, second.version], [first.revision, first.version]);
});

t(
  "apply says whether an update kept the version (policy) or gave a new one (worker)",
  async (s) => {
    await s.write("a.json", [fn("g", { policy: { Obj: { max_replica: 1 } } })]);
    await s.apply();
    await s.write("a.json", [fn("g", { policy: { Obj: { max_replica: 4, parallel: 2 } } })]);
    assert.deepEqual((await s.apply()).out, ["updated function t/n/g (version 1 kept)"]);
    await s.write("a.json", [fn("g", { image: "y", policy: { Obj: { max_replica: 4 } } })]);
    assert.deepEqual((await s.apply()).out, ["updated function t/n/g (version 1 -> 2)"]);
  },
);

t("apply --dry-run validates on the server and writes nothing", async (s) => {
  await s.write("a.json", [fn("g", {})]);
  assert.deepEqual((await s.apply({ dryRun: true })).out, ["created function t/n/g (dry run)"]);
  assert.equal((await s.get("g")).error.code, "not_found");
  await s.apply();
  const before = await s.get("g");
  await s.write("a.json", [fn("g", { image: "y" })]);
  assert.deepEqual((await s.apply({ dryRun: true })).out, [
    "updated function t/n/g (version 1 -> 2) (dry run)",
  ]);
  assert.deepEqual(await s.get("g"), before);
  await s.write("a.json", [fn("g", { resources: { CPU: 0 } })]);
  await assert.rejects(
    s.apply({ dryRun: true }),
    /POST \/object\/: 400 Invalid function t\/n\/g: resources\.CPU/,
  );
});

t("diff shows what apply would change, field by field, and whether anything would", async (s) => {
  await s.write("a.json", [fn("g", { policy: { Obj: { max_replica: 1 } } })]);
  const fresh = await s.diff();
  assert.deepEqual(fresh.out, [
    "function t/n/g: would be created",
    "1 to create, 0 to update, 0 unchanged",
  ]);
  assert.equal(fresh.changes, true);
  await s.apply();
  const none = await s.diff();
  assert.deepEqual([none.out, none.changes], [["0 to create, 0 to update, 1 unchanged"], false]);
  await s.write("a.json", [
    fn("g", { policy: { Obj: { max_replica: 3 } } }, { app: "demo" }),
  ]);
  const changed = await s.diff();
  assert.deepEqual(changed.out, [
    "function t/n/g: would be updated (version 1 kept: its workers keep running)",
    '  + object.metadata.labels.app: "demo"',
    "  ~ object.spec.policy.Obj.max_replica: 1 -> 3",
    "0 to create, 1 to update, 0 unchanged",
  ]);
  assert.equal(changed.changes, true);
  assert.equal((await s.get("g")).object.spec.policy.Obj.max_replica, 1, "diff wrote nothing");
});

t("apply --prune deletes applied objects the directory no longer has, after asking", async (s) => {
  const demo = { app: "demo" };
  await s.write("a.json", [fn("keep", {}, demo)]);
  await s.write("b.json", [
    fn("gone", { policy: { Link: { name: "p" } } }, demo),
    { type: "funcpolicy", tenant: "t", namespace: "n", name: "p", object: {} },
    fn("other", {}, { app: "else" }),
  ]);
  await s.apply();
  // Made by hand, not by apply: never pruned, even with matching labels.
  const manual = await s.f.app.request("/object/", {
    method: "PUT",
    body: JSON.stringify(fn("manual", {}, demo)),
  });
  assert.equal(manual.status, 201);
  await Deno.remove(`${s.dir}/b.json`);
  await assert.rejects(s.apply({ prune: true }), /--prune needs -l SELECTOR/);
  const dry = await s.apply({ prune: true, selector: "app=demo", dryRun: true });
  assert.deepEqual(dry.out, [
    "unchanged function t/n/keep (dry run)",
    "deleted function t/n/gone (dry run)",
  ]);
  assert.equal(dry.asked.length, 0, "a dry run asks nothing");
  const planned = await s.diff({ prune: true, selector: "app=demo" });
  assert.deepEqual(planned.out, [
    `function t/n/gone: would be deleted (no longer in ${s.dir})`,
    "0 to create, 0 to update, 1 unchanged, 1 to delete",
  ]);
  await s.write("a.json", [fn("keep", { image: "y" }, demo)]);
  const no = s.apply({ prune: true, selector: "app=demo" }, "n");
  await assert.rejects(no, /Nothing applied: deleting 1 object\(s\) was not confirmed/);
  assert.equal((await s.get("gone")).name, "gone", "kept after no");
  assert.equal((await s.get("keep")).object.spec.image, "x", "nothing applied after no");
  const yes = await s.apply({ prune: true, selector: "app=demo" }, "y");
  assert.deepEqual(yes.asked, ["Delete it? [y/N] "]);
  assert.deepEqual(yes.err, [
    `${s.dir} no longer has this object (-l app=demo):`,
    "  function t/n/gone",
  ]);
  assert.deepEqual(yes.out, [
    "updated function t/n/keep (version 1 -> 2)",
    "deleted function t/n/gone",
  ]);
  assert.equal((await s.get("gone")).error.code, "not_found");
  for (const name of ["keep", "other", "manual"]) assert.equal((await s.get(name)).name, name);
  // The policy has no label: a selector on app=demo leaves it; one on nothing else takes it.
  const policy = await s.apply({ prune: true, selector: "app!=else", yes: true });
  assert.deepEqual(policy.out, ["unchanged function t/n/keep", "deleted funcpolicy t/n/p"]);
  assert.equal(policy.asked.length, 0, "--yes asks nothing");
});

t(
  "--prune with -l reckons what the files still have from every object in them, not the selected ones",
  async (s) => {
    const ns = { type: "namespace", tenant: "t", namespace: "system", name: "p2", object: {} };
    const inP2 = (name: string, labels: Record<string, string>) => ({
      ...fn(name, {}, labels),
      namespace: "p2",
    });
    await s.write("ns.json", [ns]);
    await s.write("f.json", [inP2("f1", { app: "x" }), inP2("f2", { app: "x" })]);
    await s.apply();
    // f2 relabelled in the files: still there, so not deleted (and, not selected, not applied).
    await s.write("f.json", [inP2("f1", { app: "x" }), inP2("f2", { app: "y" })]);
    const relabelled = await s.diff({ prune: true, selector: "app=x" });
    assert.equal(relabelled.changes, false, relabelled.out.join("\n"));
    // Every app=x function gone from the files, the (unlabelled) namespace file kept: both go.
    await s.write("f.json", []);
    const planned = await s.diff({ prune: true, selector: "app=x" });
    assert.deepEqual(planned.out.filter((l) => /would be deleted/.test(l)), [
      `function t/p2/f1: would be deleted (no longer in ${s.dir})`,
      `function t/p2/f2: would be deleted (no longer in ${s.dir})`,
    ]);
  },
);

t("-l applies only the objects whose labels match, saying which it skipped", async (s) => {
  await s.write("a.yaml", [fn("a", {}, { app: "demo" }), fn("b", {})]);
  const r = await s.apply({ selector: "app=demo" });
  assert.deepEqual(r.out, ["created function t/n/a"]);
  assert.deepEqual(r.err, ["skipped function t/n/b: its labels do not match -l app=demo"]);
  await assert.rejects(s.apply({ selector: "app=" + "-bad" }), /Invalid label selector/);
});

t("apply refuses files it cannot use, naming the problem", async (s) => {
  await s.write("a.json", [fn("g", {}), fn("g", {})]);
  await assert.rejects(s.apply(), /function t\/n\/g appears twice/);
  await s.write("a.json", [{ type: "function", tenant: "t", namespace: "n" }]);
  await assert.rejects(s.apply(), /object 1 has no name/);
  await Deno.writeTextFile(`${s.dir}/a.json`, "- [unclosed");
  await assert.rejects(s.apply(), /Cannot parse .*a\.json/);
  await assert.rejects(s.apply({}, "", `${s.dir}/missing.json`), /Cannot read .*missing\.json/);
  await assert.rejects(s.apply({}, "", ["-", "-"]), /stdin \(-\) can be read once/);
});

t(
  "a dry run or a diff of files that make a namespace and its functions plans them in order",
  async (s) => {
    const ns = { type: "namespace", tenant: "t", namespace: "system", name: "n2", object: {} };
    const policy = {
      type: "funcpolicy",
      tenant: "t",
      namespace: "n2",
      name: "p",
      object: { spec: { max_replica: 2 } },
    };
    const g = { ...fn("g", { policy: { Link: { name: "p" } } }), namespace: "n2" };
    await s.write("a.json", [g, policy, ns]);
    // The namespace's dry run writes nothing: its function's alone would find no namespace (404).
    assert.deepEqual((await s.apply({ dryRun: true })).out, [
      "created namespace t/system/n2 (dry run)",
      "created funcpolicy t/n2/p (dry run, after namespace t/system/n2)",
      "created function t/n2/g (dry run, after namespace t/system/n2)",
    ]);
    assert.deepEqual((await s.diff()).out, [
      "namespace t/system/n2: would be created",
      "funcpolicy t/n2/p: would be created (after namespace t/system/n2)",
      "function t/n2/g: would be created (after namespace t/system/n2)",
      "3 to create, 0 to update, 0 unchanged",
    ]);
    await s.apply();
    const made = await s.f.app.request("/object/function/t/n2/g");
    assert.equal(made.status, 200);
    // Checked here what the server is not asked about: not "created" when it would be refused.
    const ns3 = { ...ns, name: "n3" };
    const bad = { ...fn("h", {}), namespace: "n3" };
    delete (bad.object.spec as Record<string, unknown>).image;
    await s.write("a.json", [ns3, bad]);
    await assert.rejects(
      s.apply({ dryRun: true }),
      /function t\/n3\/h: 400 .*image.* \(checked here: its parent is not made yet\)/,
    );
    await assert.rejects(s.diff(), /function t\/n3\/h: 400 .*image/);
  },
);

t("apply reads linked and upper-case files of a directory, and every -f given", async (s) => {
  // A ConfigMap-style directory: its files are links; one has an upper-case extension.
  const real = await Deno.makeTempDir({ prefix: "inferx-apply-real-" });
  try {
    await Deno.writeTextFile(`${real}/g.json`, JSON.stringify([fn("g", {}, { app: "x" })]));
    await Deno.symlink(`${real}/g.json`, `${s.dir}/g.json`);
    await s.write("H.YAML", [fn("h", {}, { app: "x" })]);
    await s.write("notes.txt", []);
    assert.deepEqual((await s.apply({ selector: "app=x" })).out, [
      "created function t/n/h", // H.YAML sorts first
      "created function t/n/g",
    ]);
    // Pruning does not take a linked file's objects for gone.
    const pruned = await s.apply({ selector: "app=x", prune: true, yes: true });
    assert.deepEqual(pruned.out, ["unchanged function t/n/h", "unchanged function t/n/g"]);
    // Several -f: all read (the last alone would have pruned g).
    const r = await s.apply(
      { selector: "app=x", prune: true, yes: true },
      "",
      [`${real}/g.json`, `${s.dir}/H.YAML`],
    );
    assert.deepEqual(r.out, ["unchanged function t/n/g", "unchanged function t/n/h"]);
  } finally {
    await Deno.remove(real, { recursive: true });
  }
});

t("apply says which field is not a string, where YAML made it a number", async (s) => {
  await Deno.writeTextFile(
    `${s.dir}/a.yaml`,
    "type: function\ntenant: t\nnamespace: n\nname: 0123\nobject: {spec: {image: x}}\n",
  );
  await assert.rejects(s.apply(), /the name of object 1 is 123, not a string \(quote it in YAML\)/);
  await Deno.writeTextFile(
    `${s.dir}/a.yaml`,
    "type: function\ntenant: t\nnamespace: n\nname: g\nobject:\n  metadata: {labels: {app: x, tier: 1}}\n  spec: {image: x}\n",
  );
  // Refused, not skipped by the selector unseen.
  await assert.rejects(
    s.apply({ selector: "tier=1" }),
    /function t\/n\/g: label tier is 1, not a string/,
  );
});
