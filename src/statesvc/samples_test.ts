import assert from "node:assert/strict";
import type { ValidationError } from "../common/errors.ts";
import { withTempDir } from "../common/testing.ts";
import { openSqliteStore } from "../store/sqlite.ts";
import { applySamples } from "./samples.ts";
import { StateService } from "./service.ts";
import { appliedForm, readObjectFiles } from "../model/object_files.ts";
import type { ObjectInput, ObjectRef } from "../rpc/types.ts";

const SAMPLES = new URL("../../config/functions", import.meta.url).pathname;

Deno.test("samples are created once: kept when changed, gone for good when deleted, across restarts", async () => {
  await withTempDir("ixsamples-", async (dir) => {
    const path = `${dir}/meta.db`;
    let store = await openSqliteStore(path);
    let meta = new StateService(store);
    const created = await applySamples(meta, SAMPLES);
    assert.ok(created > 0);
    const fns = (await meta.list("function")).items.map((f) =>
      `${f.tenant}/${f.namespace}/${f.name}`
    );
    assert.ok(fns.includes("public/demo/ngram"), fns.join());
    await meta.delete({ type: "function", tenant: "public", namespace: "demo", name: "ngram" });
    await store.close();

    store = await openSqliteStore(path);
    meta = new StateService(store);
    assert.equal(await applySamples(meta, SAMPLES), 0, "nothing created again");
    const after = (await meta.list("function")).items.map((f) => f.name);
    assert.ok(!after.includes("ngram"), "the deleted sample stays deleted");
    assert.equal(after.length, fns.length - 1);
    await store.close();
  });
});

Deno.test("a new sample file adds its objects to a store that has the others", async () => {
  await withTempDir("ixsamples-", async (dir) => {
    const meta = new StateService(await openSqliteStore());
    await Deno.writeTextFile(
      `${dir}/a.json`,
      JSON.stringify({
        type: "tenant",
        tenant: "system",
        namespace: "system",
        name: "acme",
        object: {},
      }),
    );
    assert.equal(await applySamples(meta, dir), 1);
    await Deno.writeTextFile(
      `${dir}/b.json`,
      JSON.stringify({
        type: "namespace",
        tenant: "acme",
        namespace: "system",
        name: "prod",
        object: {},
      }),
    );
    assert.equal(await applySamples(meta, dir), 1, "only the new one");
    assert.deepEqual((await meta.samplesCreated()).ids, [
      "namespace/acme/system/prod",
      "tenant/system/system/acme",
    ]);
  });
});

Deno.test("samples are read as ctl apply reads files: YAML and links too; a bad file is named", async () => {
  await withTempDir("ixsamples-", async (dir) => {
    const meta = new StateService(await openSqliteStore());
    await Deno.mkdir(`${dir}/data`);
    await Deno.writeTextFile(
      `${dir}/data/t.yaml`,
      "type: tenant\ntenant: system\nnamespace: system\nname: ylab\nobject: {}\n",
    );
    // A Kubernetes ConfigMap mounts its files as links.
    await Deno.mkdir(`${dir}/cm`);
    await Deno.symlink(`${dir}/data/t.yaml`, `${dir}/cm/t.yaml`);
    assert.equal(await applySamples(meta, `${dir}/cm`), 1);
    assert.ok(
      await meta.get({ type: "tenant", tenant: "system", namespace: "system", name: "ylab" }),
    );
    assert.equal(await applySamples(meta, `${dir}/data/..`), 0, "a directory with none: none");
    await Deno.writeTextFile(`${dir}/cm/bad.json`, '{"type": "tenant",');
    await assert.rejects(
      applySamples(meta, `${dir}/cm`),
      /Invalid samples \(INFERX_SAMPLES\): Cannot parse .*bad\.json/,
    );
    // Metadata beside the envelope's fields, as Kubernetes' files have it, is not lost unsaid.
    await Deno.writeTextFile(
      `${dir}/cm/bad.json`,
      '{"type": "tenant", "tenant": "system", "namespace": "system", "name": "zlab", ' +
        '"metadata": {"labels": {"team": "a"}}, "object": {}}',
    );
    await assert.rejects(
      applySamples(meta, `${dir}/cm`),
      /Cannot apply .*bad\.json: object 1 \(tenant system\/system\/zlab\): metadata: belongs in object, beside spec/,
    );
  });
});

Deno.test("samples are made as ctl apply makes them: applied again from the same files, each is unchanged", async () => {
  const meta = new StateService(await openSqliteStore());
  await applySamples(meta, SAMPLES);
  const files = await readObjectFiles([SAMPLES]);
  assert.ok(files.length > 0);
  for (const o of files.map(appliedForm)) {
    const cur = (await meta.get(o as ObjectRef))!;
    const r = await meta.update({ ...o, revision: cur.revision } as ObjectInput);
    assert.equal(r.unchanged, true, `${o.type} ${o.tenant}/${o.namespace}/${o.name}`);
  }
});

Deno.test("a sample the store refuses is said with the setting and its misspelt field", async () => {
  await withTempDir("ixsamples-", async (dir) => {
    const store = await openSqliteStore();
    const meta = new StateService(store);
    await Deno.writeTextFile(
      `${dir}/a.json`,
      JSON.stringify({
        type: "function",
        tenant: "public",
        namespace: "demo",
        name: "b",
        object: { spec: { imagee: "x" } },
      }),
    );
    await assert.rejects(applySamples(meta, dir), (err: ValidationError) => {
      assert.match(
        err.message,
        new RegExp(
          `^Invalid samples \\(INFERX_SAMPLES=${dir}\\): Invalid function public/demo/b: imagee: Unrecognized key`,
        ),
      );
      return true;
    });
    await store.close();
  });
});
