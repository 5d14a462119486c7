/**
 * Upgrading a data directory: `RUN_SERVICE=All` started on a directory the
 * earlier version wrote (the store as `store/snapshot.json` + `store/wal.log`,
 * the audit as `audit/requests.jsonl`) moves both into SQLite on the first
 * start, says so once, keeps the old files renamed, and serves what they held.
 */
import assert from "node:assert/strict";
import { decodeUserObject, encodeUserObject } from "../../src/model/schemas.ts";
import { sampleRequest } from "../../src/audit/testing.ts";
import { request, startPlatform } from "./helpers.ts";

const key = (type: string, t: string, ns: string, name: string) =>
  `/registry/${type}/${t}/${ns}/${name}`;
const stored = (o: Record<string, unknown>) => encodeUserObject(decodeUserObject(o));

Deno.test({
  name: "All migrates an earlier version's store and audit files on first start, once",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "inferx-migrate-" });
    await Deno.mkdir(`${dir}/store`);
    await Deno.mkdir(`${dir}/audit`);
    const tenant = {
      type: "tenant",
      tenant: "system",
      namespace: "system",
      name: "old",
      object: {},
    };
    const ns = { type: "namespace", tenant: "old", namespace: "system", name: "ns", object: {} };
    const policy = (q: number) => ({
      type: "funcpolicy",
      tenant: "old",
      namespace: "ns",
      name: "p",
      object: { spec: { queue_len: q } },
    });
    await Deno.writeTextFile(
      `${dir}/store/snapshot.json`,
      JSON.stringify({
        revision: 2,
        items: [
          {
            key: key("tenant", "system", "system", "old"),
            value: stored(tenant),
            revision: 1,
            createRevision: 1,
          },
          {
            key: key("namespace", "old", "system", "ns"),
            value: stored(ns),
            revision: 2,
            createRevision: 2,
          },
        ],
      }),
    );
    const k = key("funcpolicy", "old", "ns", "p");
    await Deno.writeTextFile(
      `${dir}/store/wal.log`,
      [
        { op: "put", key: k, value: stored(policy(7)), rev: 3, crev: 3 },
        { op: "put", key: k, value: stored(policy(9)), rev: 4, crev: 3 },
      ].map((e) => JSON.stringify(e) + "\n").join(""),
    );
    const row = { ...sampleRequest(1, Date.now() - 60_000), tenant: "old", namespace: "ns" };
    await Deno.writeTextFile(`${dir}/audit/requests.jsonl`, JSON.stringify(row) + "\n");

    let p = await startPlatform({ LOG_LEVEL: "info" }, dir);
    try {
      const got = await request(`${p.url}/object/funcpolicy/old/ns/p`);
      assert.equal(got.status, 200, JSON.stringify(got.body));
      assert.equal(got.body.revision, 4, "revisions carry over");
      assert.equal(got.body.object.spec.queue_len, 9);
      const audit = await request(`${p.url}/audit/requests?tenant=old&namespace=ns`);
      assert.deepEqual(audit.body.items, [row]);
      // New writes go on from the old revision.
      const upd = await request(`${p.url}/object/`, { body: { ...policy(10), revision: 4 } });
      assert.equal(upd.status, 200, JSON.stringify(upd.body));
      assert.ok(upd.body.revision > 4);
      await p.stop();
      assert.match(p.output(), /Migrated the store in .* to SQLite: 3 key\(s\) at revision 4/);
      assert.match(p.output(), /Imported 1 audit row\(s\) from JSON lines/);
      const names = (d: string) => [...Deno.readDirSync(`${dir}/${d}`)].map((e) => e.name).sort();
      assert.deepEqual(names("store").filter((n) => n.includes(".migrated")), [
        "snapshot.json.migrated",
        "wal.log.migrated",
      ]);
      assert.ok(names("audit").includes("requests.jsonl.migrated"));

      p = await startPlatform({ LOG_LEVEL: "info" }, dir);
      const again = await request(`${p.url}/object/funcpolicy/old/ns/p`);
      assert.equal(again.body.object.spec.queue_len, 10);
      await p.stop();
      assert.doesNotMatch(p.output(), /Migrated|Imported/, "the second start migrates nothing");
    } finally {
      await p.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
