/**
 * The contract every `MetaStore` backend must pass. A backend's test file
 * calls {@linkcode storeContract} with a factory; the same cases then run
 * against the embedded store and etcd.
 *
 * @module
 */
import assert from "node:assert/strict";
import { AlreadyExistsError, ConflictError, NotFoundError } from "../common/errors.ts";
import type { MetaStore, WatchEvent } from "./types.ts";
import { fixtureTests } from "../common/testing.ts";

/** A fresh, empty store and how to dispose of it. */
export interface StoreFixture {
  store: MetaStore;
  /** Closes the store and removes what it wrote. */
  dispose(): Promise<void>;
  /** Closes and reopens the same data; absent for stores without persistence. */
  reopen?(): Promise<MetaStore>;
}

/** Options for {@linkcode storeContract}. */
export interface StoreContractOptions {
  /** Skip every case with this printed reason (e.g. etcd not installed). */
  ignoreReason?: string;
}

function nextEvents(
  store: MetaStore,
  prefix: string,
  count: number,
  afterRevision?: number,
): Promise<WatchEvent[]> {
  return new Promise((resolve, reject) => {
    const got: WatchEvent[] = [];
    const timer = setTimeout(() => {
      w.cancel();
      reject(new Error(`Watch on ${prefix} saw ${got.length} of ${count} events in 5 s`));
    }, 5000);
    const w = store.watch(prefix, {
      afterRevision,
      onEvent(ev) {
        got.push(ev);
        if (got.length === count) {
          clearTimeout(timer);
          w.cancel();
          resolve(got);
        }
      },
      onError(err) {
        clearTimeout(timer);
        reject(err);
      },
    });
  });
}

/** Registers the contract cases as Deno tests named `${name}: ...`. */
export function storeContract(
  name: string,
  open: () => Promise<StoreFixture>,
  options: StoreContractOptions = {},
): void {
  const ignore = options.ignoreReason !== undefined;
  if (ignore) console.log(`skipping ${name} store contract: ${options.ignoreReason}`);
  const t = fixtureTests(name, open, { ignore });

  t("create() then get() returns the value with create and mod revisions", async ({ store }) => {
    const rev = await store.create("/registry/a/t/n/x", "one");
    const kv = await store.get("/registry/a/t/n/x");
    assert.equal(kv?.value, "one");
    assert.equal(kv?.revision, rev);
    assert.equal(kv?.createRevision, rev);
    assert.equal(await store.get("/registry/a/t/n/missing"), undefined);
  });

  t("create() refuses a key that exists", async ({ store }) => {
    await store.create("/k/1", "a");
    await assert.rejects(store.create("/k/1", "b"), AlreadyExistsError);
    assert.equal((await store.get("/k/1"))?.value, "a");
  });

  t("update() is a compare-and-swap on the revision", async ({ store }) => {
    const r1 = await store.create("/k/1", "a");
    const r2 = await store.update("/k/1", "b", r1);
    assert.ok(r2 > r1);
    await assert.rejects(store.update("/k/1", "c", r1), ConflictError);
    const kv = await store.get("/k/1");
    assert.equal(kv?.value, "b");
    assert.equal(kv?.createRevision, r1);
    await assert.rejects(store.update("/k/none", "x", 1), NotFoundError);
  });

  t("delete() honours an expected revision and reports missing keys", async ({ store }) => {
    const r1 = await store.create("/k/1", "a");
    await store.update("/k/1", "b", r1);
    await assert.rejects(store.delete("/k/1", r1), ConflictError);
    await store.delete("/k/1");
    assert.equal(await store.get("/k/1"), undefined);
    await assert.rejects(store.delete("/k/1"), NotFoundError);
  });

  t(
    "deleteKeys() deletes each key at a revision of its own, passing over those gone, and watches see each",
    async ({ store }) => {
      const keys = Array.from({ length: 1203 }, (_, i) => `/d/${String(i).padStart(4, "0")}`);
      for (const k of keys.slice(0, 1200)) await store.create(k, "v");
      await store.create("/e/kept", "v");
      const start = await store.revision();
      const pending = nextEvents(store, "/d/", 1200, start);
      // Three keys never made: passed over, as are keys deleted twice.
      const last = await store.deleteKeys([...keys, keys[0]]);
      assert.equal(last, await store.revision());
      assert.equal(last, start + 1200, "a revision each");
      assert.deepEqual((await store.list("/d/")).items, []);
      assert.ok(await store.get("/e/kept"));
      const evs = await pending;
      // In any order (etcd's are deleted several at a time), each key once, a revision each.
      assert.deepEqual(evs.map((e) => e.type === "delete" && e.key).sort(), keys.slice(0, 1200));
      assert.deepEqual(
        evs.map((e) => e.type === "delete" && e.revision),
        keys.slice(0, 1200).map((_, i) => start + 1 + i),
      );
      assert.equal(await store.deleteKeys([]), last);
    },
  );

  t("keys() returns the keys of the prefix only, sorted, without values", async ({ store }) => {
    await store.create("/q/b", "2");
    await store.create("/q/a", "x".repeat(100_000));
    await store.create("/qq", "3");
    await store.create("/r", "4");
    assert.deepEqual(await store.keys("/q/"), ["/q/a", "/q/b"]);
    assert.deepEqual(await store.keys("/q"), ["/q/a", "/q/b", "/qq"]);
    assert.deepEqual(await store.keys("/none/"), []);
  });

  t("list() returns only the prefix, sorted, with the store revision", async ({ store }) => {
    await store.create("/p/b", "2");
    await store.create("/p/a", "1");
    await store.create("/q/a", "3");
    const last = await store.create("/p/c", "4");
    const { items, revision } = await store.list("/p/");
    assert.deepEqual(items.map((kv) => kv.key), ["/p/a", "/p/b", "/p/c"]);
    assert.ok(revision >= last);
    assert.equal(revision, await store.revision());
  });

  t("watch() delivers puts and deletes under its prefix in order", async ({ store }) => {
    const start = await store.revision();
    const pending = nextEvents(store, "/w/", 3, start);
    const r1 = await store.create("/w/a", "1");
    await store.create("/other/a", "x");
    await store.update("/w/a", "2", r1);
    await store.delete("/w/a");
    const evs = await pending;
    assert.deepEqual(evs.map((e) => e.type), ["put", "put", "delete"]);
    assert.equal(evs[1].type === "put" && evs[1].kv.value, "2");
    const revs = evs.map((e) => (e.type === "put" ? e.kv.revision : e.revision));
    assert.deepEqual([...revs].sort((a, b) => a - b), revs);
  });

  t(
    "watch() calls back asynchronously, never inside the write that caused it",
    async ({ store }) => {
      const start = await store.revision();
      let writing = false;
      let calledInside = false;
      const seen = new Promise<void>((resolve, reject) => {
        const w = store.watch("/s/", {
          afterRevision: start,
          onEvent() {
            calledInside ||= writing;
            w.cancel();
            resolve();
          },
          onError: reject,
        });
      });
      writing = true;
      const write = store.create("/s/a", "1");
      writing = false;
      await write;
      await seen;
      assert.equal(calledInside, false);
    },
  );

  t(
    "a watch whose handler throws ends with onError, and the store goes on",
    async ({ store }) => {
      const start = await store.revision();
      let calls = 0;
      const ended = new Promise<Error>((resolve) => {
        store.watch("/x/", {
          afterRevision: start,
          onEvent() {
            calls++;
            throw new Error("the handler broke");
          },
          onError: resolve,
        });
      });
      await store.create("/x/a", "1");
      assert.equal((await ended).message, "the handler broke");
      await store.create("/x/b", "2");
      assert.equal((await store.get("/x/b"))?.value, "2");
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(calls, 1, "an ended watch hears nothing more");
    },
  );

  t("watch() from a past revision replays what happened after it", async ({ store }) => {
    const r1 = await store.create("/h/a", "1");
    await store.create("/h/b", "2");
    await store.update("/h/a", "3", r1);
    const evs = await nextEvents(store, "/h/", 2, r1);
    assert.deepEqual(
      evs.map((e) => e.type === "put" ? `${e.kv.key}=${e.kv.value}` : e.key),
      ["/h/b=2", "/h/a=3"],
    );
  });

  t("a reopened store keeps every object and its revisions", async (f) => {
    if (!f.reopen) return;
    const r1 = await f.store.create("/r/a", "1");
    await f.store.create("/r/b", "2");
    await f.store.update("/r/a", "3", r1);
    await f.store.delete("/r/b");
    const before = await f.store.list("/r/");
    const again = await f.reopen();
    const after = await again.list("/r/");
    assert.deepEqual(after.items, before.items);
    assert.equal(after.revision, before.revision);
    const r = await again.create("/r/c", "4");
    assert.ok(r > before.revision);
  });
}
