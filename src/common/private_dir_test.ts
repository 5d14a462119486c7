import assert from "node:assert/strict";
import { privateDir } from "./private_dir.ts";
import { openSqliteStore } from "../store/sqlite.ts";
import { openSqliteAudit } from "../audit/sqlite.ts";
import { withTempDir } from "./testing.ts";

const mode = (path: string) => Deno.statSync(path).mode! & 0o777;

Deno.test("privateDir() makes directories only their owner may enter, and tightens one there", async () => {
  await withTempDir("inferx-private-", (dir) => {
    privateDir(`${dir}/a/b`);
    assert.equal(mode(`${dir}/a`), 0o700);
    assert.equal(mode(`${dir}/a/b`), 0o700);
    Deno.mkdirSync(`${dir}/open`, { mode: 0o755 });
    Deno.chmodSync(`${dir}/open`, 0o755);
    privateDir(`${dir}/open`);
    assert.equal(mode(`${dir}/open`), 0o700);
    return Promise.resolve();
  });
});

Deno.test("the store's and the audit's directories are their owner's alone", async () => {
  await withTempDir("inferx-private-", async (dir) => {
    Deno.mkdirSync(`${dir}/store`, { mode: 0o755 });
    Deno.chmodSync(`${dir}/store`, 0o755); // made by an earlier version
    const store = await openSqliteStore(`${dir}/store/meta.db`);
    await store.close();
    const audit = openSqliteAudit(`${dir}/audit/audit.db`);
    await audit.close();
    assert.equal(mode(`${dir}/store`), 0o700);
    assert.equal(mode(`${dir}/audit`), 0o700);
  });
});
