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

Deno.test({
  name:
    "two processes opening one new database at once: neither loses the other's file, both say why",
  sanitizeResources: false,
  async fn() {
    // A failed open once removed the files the other process had just made (and held).
    const script = `
      import { openDatabase } from "${new URL("./sqlite.ts", import.meta.url).href}";
      const [path, at] = Deno.args;
      while (Date.now() < Number(at)) { /* the shared start */ }
      try {
        const db = openDatabase(path);
        db.exec("create table t (v text); insert into t values ('x')");
        await new Promise((r) => setTimeout(r, 300));
        console.log("opened", Deno.statSync(path).size > 0 ? "kept" : "lost");
        db.close();
      } catch (e) {
        console.log("refused", /another process has it open/.test(e.message) ? "busy" : e.message);
      }`;
    for (let round = 0; round < 4; round++) {
      const dir = await Deno.makeTempDir({ prefix: "inferx-race-" });
      try {
        const at = String(Date.now() + 1500);
        const run = () =>
          new Deno.Command(Deno.execPath(), {
            args: ["eval", "--ext=ts", script, `${dir}/x.db`, at],
            stdout: "piped",
            stderr: "inherit",
          }).output().then((o) => new TextDecoder().decode(o.stdout).trim());
        const outcomes = await Promise.all([run(), run()]);
        // At most one opens, and keeps its file; the other is told why (both may be, setting
        // the file up at the same moment: neither waits for the other's lock).
        for (const o of outcomes) assert.match(o, /^(opened kept|refused busy)$/, `round ${round}`);
        assert.ok(outcomes.filter((o) => o.startsWith("opened")).length <= 1, `round ${round}`);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    }
  },
});
