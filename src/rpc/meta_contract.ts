/**
 * The contract every `MetaClient` implementation passes: the in-process
 * state service and the gRPC client in front of it must be
 * indistinguishable, errors included.
 *
 * @module
 */
import assert from "node:assert/strict";
import { InferxError } from "../common/errors.ts";
import { fixtureTests, hasCode, seedNamespace, testCall } from "../common/testing.ts";
import type { MetaClient, MetaEvent } from "./types.ts";
import { newCallKey, parseCallId } from "../model/call.ts";

/** A fresh client over an empty store and how to dispose of it. */
export interface MetaFixture {
  meta: MetaClient;
  dispose(): Promise<void>;
}

const code = hasCode;

const tenant = { type: "tenant" as const, tenant: "system", namespace: "system", name: "acme" };
const ns = { type: "namespace" as const, tenant: "acme", namespace: "system", name: "prod" };
const fn = { type: "function" as const, tenant: "acme", namespace: "prod", name: "llm" };

/** Registers the cases as Deno tests named `${name}: ...`. */
export function metaContract(name: string, open: () => Promise<MetaFixture>): void {
  const t = fixtureTests(name, open);

  t("version() names the service", async ({ meta }) => {
    assert.match(await meta.version(), /^inferx/);
  });

  t("create, get, list, update with compare-and-swap and delete", async ({ meta }) => {
    await meta.create({ ...tenant, object: {} });
    await meta.create({ ...ns, object: {} });
    const created = await meta.create({ ...fn, object: { image: "x" } });
    assert.equal(JSON.parse(created.value).version, 1);
    assert.deepEqual(await meta.get(fn), created);
    const { items } = await meta.list("function", "acme", "prod");
    assert.deepEqual(items.map((r) => r.name), ["llm"]);
    assert.equal((await meta.list("function")).items.length, 1);
    const updated = await meta.update({
      ...fn,
      object: { image: "y" },
      revision: created.revision,
    });
    assert.equal(JSON.parse(updated.value).version, 2);
    await assert.rejects(
      meta.update({ ...fn, object: { image: "z" }, revision: created.revision }),
      code("conflict"),
    );
    await assert.rejects(meta.delete(ns), code("conflict"));
    await meta.delete(fn);
    assert.equal(await meta.get(fn), undefined);
  });

  t("a canary keeps the stable version; promote and rollback mint no version", async ({ meta }) => {
    await meta.create({ ...tenant, object: {} });
    await meta.create({ ...ns, object: {} });
    const canary = { Obj: { canary_percent: 25 } };
    const v1 = await meta.create({ ...fn, object: { image: "a", policy: canary } });
    const v2 = await meta.update({
      ...fn,
      object: { image: "b", policy: canary },
      revision: v1.revision,
    });
    const stored = JSON.parse(v2.value);
    assert.deepEqual([stored.version, stored.stable_version], [2, 1]);
    assert.equal(stored.older_versions[0].spec.image, "a");
    const spec = stored.object.spec;
    const back = await meta.update({
      ...fn,
      object: { spec, rollout: "rollback" },
      revision: v2.revision,
    });
    const rolled = JSON.parse(back.value);
    assert.deepEqual(
      [rolled.version, rolled.stable_version, rolled.last_version, rolled.object.spec.image],
      [1, 1, 2, "a"],
    );
    await assert.rejects(
      meta.update({
        ...fn,
        object: { spec: rolled.object.spec, rollout: "rollback" },
        revision: back.revision,
      }),
      code("conflict"),
    );
    await assert.rejects(
      meta.update({
        ...fn,
        object: { spec: { ...spec, image: "c" }, rollout: "promote" },
        revision: back.revision,
      }),
      code("invalid"),
    );
    const v3 = await meta.update({
      ...fn,
      object: { image: "c", policy: canary },
      revision: back.revision,
    });
    const promoted = await meta.update({
      ...fn,
      object: { spec: JSON.parse(v3.value).object.spec, rollout: "promote" },
      revision: v3.revision,
    });
    const p = JSON.parse(promoted.value);
    assert.deepEqual([p.version, p.stable_version, p.older_versions], [3, 3, undefined]);
    await assert.rejects(
      meta.create({
        type: "funcpolicy",
        tenant: "acme",
        namespace: "prod",
        name: "pinned",
        object: { traffic: [{ version: 1, percent: 100 }] },
      }),
      code("invalid"),
    );
  });

  t("an update equal to the stored object writes nothing and says unchanged", async ({ meta }) => {
    await meta.create({ ...tenant, object: {} });
    await meta.create({ ...ns, object: {} });
    const created = await meta.create({ ...fn, object: { image: "x", resources: { CPU: 500 } } });
    // The same spec, with the defaults spelt out and keys in another order.
    const same = await meta.update({
      ...fn,
      object: { spec: { resources: { Mem: 1024, CPU: 500 }, commands: [], image: "x" } },
      revision: created.revision,
    });
    assert.equal(same.unchanged, true);
    assert.equal(same.revision, created.revision);
    assert.equal(same.value, created.value);
    assert.deepEqual(await meta.get(fn), created, "nothing was written");
  });

  t(
    "a policy, label or status change keeps the version; a worker change gives a new one",
    async ({ meta }) => {
      await meta.create({ ...tenant, object: {} });
      await meta.create({ ...ns, object: {} });
      const spec = { image: "x", policy: { Obj: { max_replica: 1 } } };
      let rec = await meta.create({ ...fn, object: spec });
      const version = () => JSON.parse(rec.value).version;
      const write = async (object: unknown) => {
        rec = await meta.update({ ...fn, object, revision: rec.revision });
        assert.notEqual(rec.unchanged, true);
        return version();
      };
      assert.equal(await write({ ...spec, policy: { Obj: { max_replica: 3 } } }), 1);
      const conditions = [{ type: "Schedulable", status: "False", reason: "R", message: "m" }];
      assert.equal(await write({ spec, status: { conditions } }), 1);
      assert.equal(await write({ metadata: { labels: { app: "demo" } }, spec }), 1);
      assert.deepEqual(
        JSON.parse(rec.value).object.status.conditions[0].reason,
        "R",
        "status kept",
      );
      assert.equal(await write({ ...spec, image: "y" }), 2);
    },
  );

  t("a dry run validates and answers what would be stored, writing nothing", async ({ meta }) => {
    await meta.create({ ...tenant, object: {} });
    await meta.create({ ...ns, object: {} });
    const dry = await meta.create({ ...fn, object: { image: "x" } }, { dryRun: true });
    assert.equal(dry.dryRun, true);
    assert.equal(dry.revision, 0);
    assert.equal(JSON.parse(dry.value).version, 1);
    assert.equal(await meta.get(fn), undefined);
    await assert.rejects(
      meta.create({ ...fn, object: { image: "" } }, { dryRun: true }),
      code("invalid"),
    );
    const created = await meta.create({ ...fn, object: { image: "x" } });
    await assert.rejects(meta.create({ ...fn, object: {} }, { dryRun: true }), code("invalid"));
    await assert.rejects(
      meta.create({ ...fn, object: { image: "x" } }, { dryRun: true }),
      code("already_exists"),
    );
    const upd = await meta.update({ ...fn, object: { image: "y" }, revision: created.revision }, {
      dryRun: true,
    });
    assert.equal(upd.dryRun, true);
    assert.equal(upd.revision, created.revision);
    assert.equal(JSON.parse(upd.value).version, 2);
    assert.deepEqual(await meta.get(fn), created, "nothing was written");
    const same = await meta.update(
      { ...fn, object: { image: "x" }, revision: created.revision },
      { dryRun: true },
    );
    assert.equal(same.unchanged, true);
    await assert.rejects(
      meta.update({ ...fn, object: { image: "y" }, revision: 1 }, { dryRun: true }),
      code("conflict"),
    );
  });

  t("errors keep their codes: invalid, not_found, already_exists", async ({ meta }) => {
    await assert.rejects(meta.create({ ...ns, object: {} }), code("not_found"));
    await meta.create({ ...tenant, object: {} });
    await assert.rejects(meta.create({ ...tenant, object: {} }), code("already_exists"));
    await meta.create({ ...ns, object: {} });
    await assert.rejects(
      meta.create({ ...fn, object: { image: "x", resources: { CPU: -1 } } }),
      (err: unknown) => {
        assert.ok(err instanceof InferxError && err.code === "invalid");
        assert.equal(err.details?.field, "resources.CPU");
        return true;
      },
    );
    await assert.rejects(
      meta.update({ ...fn, object: { image: "x" }, revision: 1 }),
      code("not_found"),
    );
  });

  t(
    "call records are validated and kept as written, compare-and-swap included",
    async ({ meta }) => {
      // A call is stored only in a namespace that is there.
      const object = testCall("acme", "prod");
      await assert.rejects(
        meta.create({
          type: "call",
          tenant: "acme",
          namespace: "prod",
          name: parseCallId(object.id).key,
          object,
        }),
        code("not_found"),
      );
      await seedNamespace(meta, "acme", "prod");
      const ref = {
        type: "call" as const,
        tenant: "acme",
        namespace: "prod",
        name: parseCallId(object.id).key,
      };
      const created = await meta.create({ ...ref, object });
      assert.deepEqual(JSON.parse(created.value), object);
      const claimed = await meta.update({
        ...ref,
        object: { ...object, owner: "gw-1", leaseUntil: 3 },
        revision: created.revision,
      });
      await assert.rejects(
        meta.update({ ...ref, object: { ...object, owner: "gw-2" }, revision: created.revision }),
        code("conflict"),
      );
      assert.equal(JSON.parse((await meta.get(ref))!.value).owner, "gw-1");
      assert.equal((await meta.list("call", "acme")).items[0].revision, claimed.revision);
      await assert.rejects(
        meta.create({ ...ref, name: newCallKey(), object: { ...object, status: "done" } }),
        code("invalid"),
      );
    },
  );

  t("watch() delivers puts and deletes after a revision", async ({ meta }) => {
    const { revision } = await meta.list("tenant");
    const got: MetaEvent[] = [];
    const done = Promise.withResolvers<void>();
    const w = meta.watch("tenant", {
      afterRevision: revision,
      onEvent(ev) {
        got.push(ev);
        if (got.length === 2) done.resolve();
      },
      onError: done.reject,
    });
    await meta.create({ ...tenant, object: {} });
    await meta.delete(tenant);
    await done.promise;
    w.cancel();
    assert.deepEqual(got.map((e) => e.type), ["put", "delete"]);
    assert.equal(got[1].type === "delete" && got[1].ref.name, "acme");
  });
}
