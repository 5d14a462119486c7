import assert from "node:assert/strict";
import { parseAllDocuments } from "yaml";
import { fixtureTests } from "../common/testing.ts";
import { gatewayFixture } from "../gateway/testing.ts";
import { CliError, type Io, type Send } from "./_shared.ts";
import { sendTo } from "./testing.ts";
import { applyObjects, diffObjects } from "./apply.ts";
import { exportObjects, type ExportOptions } from "./export.ts";

function recorder() {
  const out: string[] = [];
  const err: string[] = [];
  const io: Io = { out: (s) => out.push(s), err: (s) => err.push(s) };
  return { io, out, err };
}

/** The objects of tenant `u` a user made, of every type, with labels and a linked policy. */
const OBJECTS = [
  {
    type: "tenant",
    tenant: "system",
    namespace: "system",
    name: "u",
    object: { metadata: { labels: { team: "ml" } }, spec: { quota: { max_replica: 4 } } },
  },
  { type: "namespace", tenant: "u", namespace: "system", name: "p", object: { spec: {} } },
  { type: "namespace", tenant: "u", namespace: "system", name: "q", object: { spec: {} } },
  {
    type: "funcpolicy",
    tenant: "u",
    namespace: "p",
    name: "pol",
    object: { spec: { max_replica: 3, parallel: 2 } },
  },
  {
    type: "function",
    tenant: "u",
    namespace: "p",
    name: "web",
    object: {
      metadata: { labels: { app: "web" }, annotations: { owner: "a@b" } },
      spec: { image: "x", policy: { Link: { name: "pol" } } },
    },
  },
  {
    type: "function",
    tenant: "u",
    namespace: "q",
    name: "batch",
    object: {
      spec: {
        image: "y",
        policy: { Obj: { max_replica: 2, traffic: [{ version: 1, percent: 100 }] } },
      },
    },
  },
];

async function setup() {
  const a = await gatewayFixture();
  const b = await gatewayFixture();
  const dir = await Deno.makeTempDir({ prefix: "inferx-export-" });
  const send = { a: sendTo(a.app), b: sendTo(b.app) };
  await Deno.writeTextFile(`${dir}/objects.json`, JSON.stringify(OBJECTS));
  await applyObjects({ send: send.a, io: recorder().io }, [`${dir}/objects.json`]);
  const exported = async (from: Send, options?: ExportOptions) => {
    const r = recorder();
    const n = await exportObjects({ send: from, io: r.io }, options);
    return { ...r, n, text: r.out.join("\n") };
  };
  return {
    send,
    dir,
    exported,
    async dispose() {
      await a.close();
      await b.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

const t = fixtureTests("ctl export", setup);

t(
  "export prints every object as YAML, parents first, that apply takes back unchanged",
  async (s) => {
    const all = await s.exported(s.send.a);
    const docs = parseAllDocuments(all.text).map((d) => d.toJS());
    // The fixture's own tenant t, namespace t/n and function t/n/f, and the six above.
    assert.equal(all.n, 9);
    assert.equal(docs.length, 9);
    const types = docs.map((d) => d.type);
    assert.deepEqual(types, [...types].sort((x, y) => RANK[x] - RANK[y]), "parents first");
    const web = docs.find((d) => d.name === "web");
    assert.deepEqual(web.object.metadata.labels, { app: "web" });
    assert.equal(web.object.metadata.annotations.owner, "a@b");
    assert.deepEqual(web.object.spec.policy, { Link: { name: "pol", objType: "funcpolicy" } });
    for (const d of docs) {
      assert.deepEqual(Object.keys(d), ["type", "tenant", "namespace", "name", "object"]);
      assert.equal(d.object.status, undefined);
    }
    // A split that names version 1 alone holds anywhere: kept, nothing said.
    assert.deepEqual(docs.find((d) => d.name === "batch").object.spec.policy.Obj.traffic, [
      { version: 1, percent: 100 },
    ]);
    assert.deepEqual(all.err, ["exported 9 object(s)"]);

    // Applied to the platform it came from: nothing changes.
    await Deno.writeTextFile(`${s.dir}/backup.yaml`, all.text);
    const same = recorder();
    await applyObjects({ send: s.send.a, io: same.io }, [`${s.dir}/backup.yaml`]);
    const changed = same.out.filter((l) => !l.startsWith("unchanged"));
    // The fixture made its own objects without ctl: apply marks them as its own.
    assert.deepEqual(changed.sort(), [
      "updated function t/n/f (version 1 kept)",
      "updated namespace t/system/n",
      "updated tenant system/system/t",
    ]);

    // Applied to another platform: created there, and a diff then finds nothing to do.
    const copy = recorder();
    await applyObjects({ send: s.send.b, io: copy.io }, [`${s.dir}/backup.yaml`]);
    assert.ok(copy.out.includes("created function u/p/web"), copy.out.join("\n"));
    const diff = recorder();
    assert.equal(
      await diffObjects({ send: s.send.b, io: diff.io }, [`${s.dir}/backup.yaml`]),
      false,
    );
    // And the two platforms export tenant u the same.
    assert.equal(
      (await s.exported(s.send.b, { scope: "u" })).text,
      (await s.exported(s.send.a, { scope: "u" })).text,
    );
  },
);

const RANK: Record<string, number> = { tenant: 0, namespace: 1, funcpolicy: 2, function: 3 };

t("export TENANT, TENANT/NS and -l keep to what they name", async (s) => {
  const names = async (options: ExportOptions) =>
    parseAllDocuments((await s.exported(s.send.a, options)).text).map((d) => {
      const o = d.toJS();
      return `${o.type} ${o.tenant}/${o.namespace}/${o.name}`;
    });
  assert.deepEqual(await names({ scope: "u" }), [
    "tenant system/system/u",
    "namespace u/system/p",
    "namespace u/system/q",
    "funcpolicy u/p/pol",
    "function u/p/web",
    "function u/q/batch",
  ]);
  assert.deepEqual(await names({ scope: "u/p" }), [
    "namespace u/system/p",
    "funcpolicy u/p/pol",
    "function u/p/web",
  ]);
  assert.deepEqual(await names({ selector: "app=web" }), ["function u/p/web"]);
  assert.deepEqual(await names({ scope: "u", selector: "team" }), ["tenant system/system/u"]);
  // Nothing readable there (a misspelt tenant, a key that reads nothing): an error, not an empty
  // backup that says it succeeded.
  await assert.rejects(
    s.exported(s.send.a, { scope: "nobody" }),
    /^CliError: Nothing to export: no object in nobody this key may read$|Nothing to export: no object in nobody this key may read/,
  );
  await assert.rejects(
    s.exported(s.send.a, { selector: "app=none" }),
    /Nothing to export: no object with labels matching -l app=none this key may read/,
  );
  // A function exported without the policy it links: said, since elsewhere it would be refused.
  const web = await s.exported(s.send.a, { selector: "app=web" });
  assert.match(
    web.err.join("\n"),
    /note: function u\/p\/web links funcpolicy u\/p\/pol, which is not exported/,
  );
  for (const scope of ["u/p/web", "u/", "/p"]) {
    await assert.rejects(s.exported(s.send.a, { scope }), CliError);
  }
  await assert.rejects(s.exported(s.send.a, { selector: "a==b=" }), CliError);
});

t(
  "a rollout under way is exported as it is: applied back it holds, and what elsewhere refuses is said",
  async (s) => {
    // Version 2 of u/q/batch takes 30% of the calls, version 1 the rest.
    const cur = (await s.send.a("GET", "/object/function/u/q/batch")).json;
    const split = [{ version: 1, percent: 70 }, { version: 2, percent: 30 }];
    const r = await s.send.a("POST", "/object/", {
      ...cur,
      object: {
        metadata: cur.object.metadata,
        spec: { ...cur.object.spec, image: "y2", policy: { Obj: { traffic: split } } },
      },
    });
    assert.equal(r.status, 200, JSON.stringify(r.json));
    const rollout = async () => (await s.send.a("GET", "/rollout/u/q/batch")).json.traffic;
    const before = await rollout();
    const all = await s.exported(s.send.a, { scope: "u/q" });
    const batch = parseAllDocuments(all.text).map((d) => d.toJS()).find((d) => d.name === "batch");
    assert.deepEqual(batch.object.spec.policy.Obj.traffic, split);
    assert.match(
      all.err.join("\n"),
      /note: function u\/q\/batch: its traffic split \(v1 70%, v2 30%\) names its versions: applied to another platform, .* take policy\.Obj\.traffic out first/,
    );
    await Deno.writeTextFile(`${s.dir}/q.yaml`, all.text);
    const back = recorder();
    await applyObjects({ send: s.send.a, io: back.io }, [`${s.dir}/q.yaml`]);
    assert.ok(back.out.includes("unchanged function u/q/batch"), back.out.join("\n"));
    assert.deepEqual(await rollout(), before, "the split holds");
    // Elsewhere, where it would be version 1: refused, as the note said.
    const tenant = OBJECTS[0];
    assert.equal((await s.send.b("PUT", "/object/", tenant)).status, 201);
    await assert.rejects(
      applyObjects({ send: s.send.b, io: recorder().io }, [`${s.dir}/q.yaml`]),
      /traffic/,
    );
  },
);
