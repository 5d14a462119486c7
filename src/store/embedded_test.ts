import assert from "node:assert/strict";
import { storeContract } from "./contract.ts";
import { openEmbeddedStore } from "./embedded.ts";
import { CompactedError } from "./types.ts";

storeContract("embedded in memory", async () => {
  const store = await openEmbeddedStore();
  return { store, dispose: () => store.close() };
});

storeContract("embedded on disk", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ixstore-" });
  let store = await openEmbeddedStore({ dir, compactEvery: 3 });
  return {
    get store() {
      return store;
    },
    async reopen() {
      await store.close();
      store = await openEmbeddedStore({ dir, compactEvery: 3 });
      return store;
    },
    async dispose() {
      await store.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
});

Deno.test("embedded store reports compaction to a watch that starts too early", async () => {
  const store = await openEmbeddedStore({ historyLimit: 2 });
  for (let i = 0; i < 5; i++) await store.create(`/c/${i}`, "x");
  const err = await new Promise<Error>((resolve) =>
    store.watch("/c/", { afterRevision: 1, onEvent() {}, onError: resolve })
  );
  assert.ok(err instanceof CompactedError);
  assert.equal(err.compactedRevision, 3);
  await store.close();
});

Deno.test("embedded store survives a torn last log line", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ixstore-" });
  const store = await openEmbeddedStore({ dir });
  await store.create("/t/a", "1");
  await store.close();
  await Deno.writeTextFile(`${dir}/wal.log`, '{"op":"put","key":"/t/b"', { append: true });
  const again = await openEmbeddedStore({ dir });
  assert.deepEqual((await again.list("/t/")).items.map((kv) => kv.key), ["/t/a"]);
  await again.close();
  await Deno.remove(dir, { recursive: true });
});
