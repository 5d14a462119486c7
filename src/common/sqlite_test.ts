import assert from "node:assert/strict";
import { checkpointWhole, openDatabase } from "./sqlite.ts";
import { fillLeaving, withTmpfs } from "./testing.ts";

Deno.test("checkpointWhole() throws when the log cannot be written into the file (a full disk)", async () => {
  await withTmpfs("4m", async (data) => {
    const db = openDatabase(`${data}/x.db`);
    try {
      db.exec("pragma wal_autocheckpoint = 0; create table t (v text)");
      const insert = db.prepare("insert into t values (?)");
      for (let i = 0; i < 50; i++) insert.run("x".repeat(4000));
      const filler = await fillLeaving(data, 0);
      // At close, SQLite's own checkpoint would fail without a word: the log the only copy.
      assert.throws(() => checkpointWhole(db), /log could not be written|full/);
      await Deno.remove(filler);
      checkpointWhole(db);
      assert.equal(Deno.statSync(`${data}/x.db-wal`).size, 0, "the log emptied");
    } finally {
      db.close();
    }
  });
});

Deno.test("openDatabase() that fails leaves no file it made, and none it did not make goes", async () => {
  await withTmpfs("1m", async (data) => {
    await Deno.writeTextFile(`${data}/keep`, "");
    const filler = await fillLeaving(data, 0);
    assert.throws(() => openDatabase(`${data}/x.db`), /the file system holding it is full/);
    assert.deepEqual([...Deno.readDirSync(data)].map((e) => e.name).sort(), ["filler", "keep"]);
    await Deno.remove(filler);
    openDatabase(`${data}/x.db`).close();
  });
});
