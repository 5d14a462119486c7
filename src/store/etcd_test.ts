import assert from "node:assert/strict";
import { storeContract } from "./contract.ts";
import { type EtcdStore, type EtcdStoreOptions, keyText, openEtcdStore } from "./etcd.ts";
import { etcdUnavailable, startEtcd, type StartEtcdOptions } from "./etcd_server.ts";
import { CompactedError } from "./types.ts";
import { InferxError } from "../common/errors.ts";

const missing = etcdUnavailable();

storeContract("etcd", async () => {
  const etcd = await startEtcd();
  let store = await openEtcdStore(etcd.url);
  return {
    get store() {
      return store;
    },
    async reopen() {
      await store.close();
      store = await openEtcdStore(etcd.url);
      return store;
    },
    async dispose() {
      await store.close();
      await etcd.stop();
    },
  };
}, { ignoreReason: missing });

/**
 * A test against a fresh etcd (started with `options.etcd`) and a store on it (opened with the
 * rest of `options`), both stopped after it.
 */
function etcdTest(
  name: string,
  fn: (store: EtcdStore, etcd: Awaited<ReturnType<typeof startEtcd>>) => Promise<void>,
  options: EtcdStoreOptions & { etcd?: StartEtcdOptions } = {},
) {
  Deno.test({
    name,
    ignore: missing !== undefined,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const etcd = await startEtcd(options.etcd);
      const store = await openEtcdStore(etcd.url, options);
      try {
        await fn(store, etcd);
      } finally {
        await store.close();
        await etcd.stop();
      }
    },
  });
}

etcdTest(
  "etcd store reports a watch from a compacted revision so the caller lists again",
  async (store) => {
    const r1 = await store.create("/registry/c/t/n/a", "1");
    for (let i = 0; i < 5; i++) await store.update("/registry/c/t/n/a", String(i), r1 + i);
    const last = await store.revision();
    await store.client.kv.compact({ revision: last });
    const err = await new Promise<Error>((resolve) =>
      store.watch("/registry/c/", { afterRevision: r1, onEvent() {}, onError: resolve })
    );
    assert.ok(err instanceof CompactedError, err.message);
  },
);

etcdTest(
  "etcd store lists a prefix past one page whole, at one revision, while keys are written",
  async (store) => {
    const key = (i: number) => `/registry/c/t/n/k${String(i).padStart(4, "0")}`;
    for (let i = 0; i < 150; i++) await store.create(key(i), String(i));
    await store.create("/registry/d/t/n/other", "x"); // past the prefix's end
    const writes = (async () => {
      for (let i = 150; i < 200; i++) await store.create(key(i), String(i));
    })();
    const listed = await store.list("/registry/c/");
    await writes;
    const all = await store.list("/registry/c/");
    assert.equal(all.items.length, 200);
    // Exactly what was there at the list's revision, each once and in order.
    const then = all.items.filter((kv) => kv.revision <= listed.revision);
    assert.deepEqual(listed.items.map((kv) => kv.key), then.map((kv) => kv.key));
    assert.ok(listed.items.length >= 150, `${listed.items.length} listed`);
    assert.deepEqual(
      listed.items.slice(0, 150).map((kv) => kv.value),
      [...Array(150).keys()].map(String),
    );
  },
);

/**
 * Runs `before` ahead of each range `store` reads (given its count so far; one returning false
 * leaves the range alone), and counts the ranges and those that fail.
 */
function onRanges(store: EtcdStore, before?: (n: number) => false | Promise<void>) {
  /** `deadlines`: each range's own deadline, in ms from when it was read (none: the call's). */
  const counts = { ranges: 0, failed: 0, deadlines: [] as (number | undefined)[] };
  const client = store.client;
  const getAll = client.getAll.bind(client);
  client.getAll = () => {
    const range = getAll();
    const exec = range.exec.bind(range);
    range.exec = async () => {
      const n = ++counts.ranges;
      const own = (range as unknown as { callOptions?: { deadline?: number } }).callOptions;
      counts.deadlines.push(own?.deadline && own.deadline - Date.now());
      await before?.(n);
      try {
        return await exec();
      } catch (err) {
        counts.failed++;
        throw err;
      }
    };
    return range;
  };
  return counts;
}

/** Writes a key past `prefix`'s list, then compacts etcd to the newest revision. */
async function compactPast(store: EtcdStore, key: string) {
  await store.create(key, "x");
  await store.client.kv.compact({ revision: await store.revision() });
}

etcdTest(
  "etcd store lists again, at a new revision, when a compaction passes the first page's",
  async (store) => {
    const key = (i: number) => `/registry/c/t/n/k${String(i).padStart(4, "0")}`;
    for (let i = 0; i < 100; i++) await store.create(key(i), String(i));
    // The second range (the list's second page) finds the first page's revision compacted.
    const counts = onRanges(store, (n) => n === 2 && compactPast(store, key(100)));
    const listed = await store.list("/registry/c/");
    assert.equal(listed.items.length, 101);
    assert.ok(counts.ranges >= 4, `${counts.ranges} ranges: two pages, then two again`);
  },
);

etcdTest(
  "etcd store says so when compactions pass every list's revision, and lists once they stop",
  async (store) => {
    const key = (i: number) => `/registry/c/t/n/k${String(i).padStart(4, "0")}`;
    for (let i = 0; i < 100; i++) await store.create(key(i), String(i));
    // Every second page of a list finds its first page's revision compacted.
    let compacting = true;
    let made = 100;
    onRanges(store, (n) => compacting && n % 2 === 0 && compactPast(store, key(made++)));
    const err = await store.list("/registry/c/").catch((e) => e);
    assert.ok(err instanceof InferxError && err.code === "unavailable", String(err));
    assert.match(err.message, /compacted the revision of the list .* 3 times in a row/);
    assert.equal(err.retryable, true);
    compacting = false;
    const listed = await store.list("/registry/c/");
    assert.deepEqual(listed.items.map((kv) => kv.key), await store.keys("/registry/c/"));
    assert.equal(listed.items.length, made);
  },
);

etcdTest(
  "etcd store reads lists and keys within the lists' deadline, not a call's",
  async (store) => {
    for (let i = 0; i < 200; i++) await store.create(`/registry/c/t/n/k${1000 + i}`, "v");
    const counts = onRanges(store);
    assert.equal((await store.list("/registry/c/")).items.length, 200);
    assert.equal((await store.keys("/registry/c/")).length, 200);
    assert.ok(counts.ranges >= 3, `${counts.ranges} ranges`);
    for (const ms of counts.deadlines) assert.ok(ms !== undefined && ms > 20_000, String(ms));
  },
  { timeoutMs: 1000, listTimeoutMs: 30_000 },
);

etcdTest(
  "etcd store reads a page too large for one answer again in halves",
  async (store) => {
    // Answers of 4 MiB at most: pages of two objects, at etcd's default largest; these, of
    // 3 MiB (let in by a larger --max-request-bytes), make pages too large for one answer.
    const value = "v".repeat(3 * 1024 * 1024);
    for (let i = 0; i < 5; i++) await store.create(`/registry/c/t/n/k${100 + i}`, value);
    const counts = onRanges(store);
    const listed = await store.list("/registry/c/");
    assert.deepEqual(
      listed.items.map((kv) => kv.key),
      [...Array(5).keys()].map((i) => `/registry/c/t/n/k${100 + i}`),
    );
    assert.ok(counts.failed >= 1, `${counts.failed} pages read again`);
  },
  { maxAnswerBytes: 4 * 1024 * 1024, etcd: { maxRequestBytes: 4 * 1024 * 1024 } },
);

etcdTest(
  "etcd store sizes pages for large objects after small ones, and reads none twice",
  async (store) => {
    // Answers of 16 MiB at most (ten objects of etcd's default largest): 300 small objects,
    // then 12 of 1.4 MiB. Pages sized by the small ones alone would pass one answer.
    const key = (i: number) => `/registry/c/t/n/k${String(i).padStart(4, "0")}`;
    for (let i = 0; i < 300; i++) await store.create(key(i), String(i));
    const large = "v".repeat(1.4 * 1024 * 1024);
    for (let i = 300; i < 312; i++) await store.create(key(i), large);
    const counts = onRanges(store);
    const listed = await store.list("/registry/c/");
    assert.deepEqual(listed.items.map((kv) => kv.key), [...Array(312).keys()].map(key));
    assert.equal(counts.failed, 0);
    assert.ok(counts.ranges >= 32, `${counts.ranges} pages of ten keys at most`);
    // A list of small objects is not sorted by etcd, and its keys come in order as well.
    assert.deepEqual(await store.keys("/registry/c/"), [...Array(312).keys()].map(key));
  },
  { maxAnswerBytes: 16 * 1024 * 1024 },
);

Deno.test({
  name: "openEtcdStore() says clearly when etcd cannot be reached",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await assert.rejects(
      openEtcdStore("http://127.0.0.1:1", { timeoutMs: 500 }),
      /Cannot reach etcd at http:\/\/127\.0\.0\.1:1/,
    );
  },
});

Deno.test({
  name: "etcd store answers unavailable while etcd is down, and works again once it is back",
  ignore: missing !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const etcd = await startEtcd();
    const store = await openEtcdStore(etcd.url, { timeoutMs: 1000 });
    try {
      const r1 = await store.create("/registry/o/t/n/a", "1");
      await etcd.down();
      for (
        const op of [
          () => store.get("/registry/o/t/n/a"),
          () => store.update("/registry/o/t/n/a", "2", r1),
        ]
      ) {
        await assert.rejects(op(), (err: unknown) => {
          assert.ok(err instanceof InferxError && err.code === "unavailable", String(err));
          // The first call's tries open the client's breaker, which holds the next one back.
          assert.match(err.message, /etcd did not answer|none is sent to it/);
          // Named as the caller knows it, not by the store's key.
          assert.match(err.message, /^Cannot (read|update) o t\/n\/a: /);
          // Named, not addressed: the message reaches API callers.
          assert.doesNotMatch(err.message, new RegExp(`${new URL(etcd.url).port}|Resolution`));
          return err.retryable;
        });
      }
      await etcd.up();
      let value: string | undefined;
      for (let i = 0; i < 100 && value === undefined; i++) {
        value = await store.get("/registry/o/t/n/a").then((kv) => kv?.value, () => undefined);
        if (value === undefined) await new Promise((r) => setTimeout(r, 200));
      }
      assert.equal(value, "1", "the data survived and the store answers again");
    } finally {
      await store.close();
      await etcd.stop();
    }
  },
});

/** etcd's count of watch streams opened on it (its gRPC server metrics). */
async function watchStreamsOpened(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split("\n").find((l) =>
    l.startsWith("grpc_server_started_total{") && l.includes('grpc_method="Watch"') &&
    l.includes('grpc_service="etcdserverpb.Watch"')
  );
  assert.ok(line, "etcd reports its watch streams");
  return Number(line.slice(line.lastIndexOf(" ") + 1));
}

Deno.test({
  name: "etcd watches keep one stream open past the call deadline",
  ignore: missing !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const etcd = await startEtcd();
    const store = await openEtcdStore(etcd.url, { timeoutMs: 300 });
    try {
      const seen: string[] = [];
      const watch = store.watch("/registry/d/", {
        onEvent: (ev) => seen.push(ev.type === "put" ? ev.kv.value : "-"),
      });
      await new Promise((r) => setTimeout(r, 1500));
      await store.create("/registry/d/t/n/a", "after");
      for (let i = 0; i < 50 && seen.length === 0; i++) {
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.deepEqual(seen, ["after"]);
      // With the call deadline on it, the stream ended every 0.3 s and was opened again.
      assert.equal(await watchStreamsOpened(etcd.url), 1);
      watch.cancel();
    } finally {
      await store.close();
      await etcd.stop();
    }
  },
});

Deno.test({
  name:
    "etcd watches lose no event, deliver none twice and keep revision order while etcd restarts under writes",
  ignore: missing !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    const etcd = await startEtcd();
    const store = await openEtcdStore(etcd.url, { timeoutMs: 1000 });
    const watches: { cancel(): void }[] = [];
    try {
      const start = await store.revision();
      const views: Map<string, number>[] = [];
      const problems: string[] = [];
      // Each write is one revision, so a watch's revisions must strictly increase.
      const watchFrom = (after: number) => {
        const view = new Map<string, number>();
        const k = views.push(view);
        let last = after;
        watches.push(store.watch("/registry/w/", {
          afterRevision: after,
          onEvent(ev) {
            const rev = ev.type === "put" ? ev.kv.revision : ev.revision;
            if (rev <= last) problems.push(`watch ${k}: revision ${rev} after ${last}`);
            last = rev;
            if (ev.type === "put") view.set(ev.kv.key, ev.kv.revision);
            else view.delete(ev.key);
          },
          onError: (err) => problems.push(`watch ${k}: ${err.message}`),
        }));
      };
      watchFrom(start);
      watchFrom(start);
      let on = true;
      let writes = 0;
      const writer = async (w: number) => {
        for (let i = 0; on; i++) {
          const key = `/registry/w/t/n/${w}-${i % 5}`;
          try {
            if (i % 3 === 2) await store.delete(key);
            else {
              const cur = await store.get(key);
              if (cur) await store.update(key, String(i), cur.revision);
              else await store.create(key, String(i));
            }
            writes++;
          } catch {
            await sleep(20); // etcd is away
          }
          await sleep(2);
        }
      };
      const load = Promise.all([0, 1, 2].map(writer));
      for (let round = 0; round < 3; round++) {
        await sleep(400 + Math.random() * 400);
        // A watch that starts with history to catch up on, while writes go on.
        watchFrom(start);
        await etcd.down();
        await sleep(200 + Math.random() * 600);
        await etcd.up();
      }
      await sleep(1000);
      on = false;
      await load;
      assert.ok(writes > 30, `the writes ran (${writes})`);
      let items;
      for (let i = 0; !items; i++) {
        items = await store.list("/registry/w/").then((r) => r.items, (err) => {
          if (i > 100) throw err;
          return sleep(100).then(() => undefined);
        });
      }
      const text = (m: Map<string, number>) => JSON.stringify([...m].sort());
      const truth = text(new Map(items.map((kv) => [kv.key, kv.revision])));
      for (let i = 0; i < 150 && views.some((v) => text(v) !== truth); i++) await sleep(100);
      assert.deepEqual(problems, []);
      for (const [k, view] of views.entries()) assert.equal(text(view), truth, `watch ${k + 1}`);
    } finally {
      for (const w of watches) w.cancel();
      await store.close();
      await etcd.stop();
    }
  },
});

etcdTest(
  "a value past etcd's request size is refused as too_large, not as etcd unavailable",
  async (store) => {
    const err = await store.create("/registry/c/t/n/big", "€".repeat(800_000)).then(
      () => undefined,
      (e) => e,
    );
    assert.equal(err?.code, "too_large", String(err));
    assert.equal(err.retryable, false);
  },
);

etcdTest(
  "etcd watches over compactions and restarts: a quiet one resumes where progress said, a cancelled one ends without a crash",
  async (store, etcd) => {
    const start = await store.create("/registry/q/t/n/seed", "0");
    const quiet: string[] = [];
    const errors: Error[] = [];
    const quietWatch = store.watch("/registry/q/", {
      afterRevision: start,
      onEvent: (ev) => quiet.push(ev.type === "put" ? ev.kv.value : "-"),
      onError: (e) => errors.push(e),
    });
    const busy = store.watch("/registry/b/", { afterRevision: start, onEvent() {} });
    let rev = await store.create("/registry/b/t/n/x", "0");
    for (let i = 1; i < 20; i++) rev = await store.update("/registry/b/t/n/x", String(i), rev);
    await new Promise((r) => setTimeout(r, 600)); // progress notifications come
    await store.client.kv.compact({ revision: rev });
    await etcd.down();
    await etcd.up();
    // The quiet watch resumed past the compaction (progress moved it), and still hears.
    await store.create("/registry/q/t/n/later", "1");
    for (let i = 0; i < 100 && !quiet.includes("1"); i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.deepEqual(errors, []);
    assert.deepEqual(quiet, ["1"]);
    // A watch from a compacted revision, while others share its stream: told, not a crash.
    const err = await new Promise<Error>((resolve) =>
      store.watch("/registry/b/", { afterRevision: start, onEvent() {}, onError: resolve })
    );
    assert.ok(err instanceof CompactedError, err.message);
    await new Promise((r) => setTimeout(r, 500)); // a crash would come from the stream now
    quietWatch.cancel();
    busy.cancel();
  },
  { timeoutMs: 1000 },
);

etcdTest("a request etcd refuses for its size does not stop the next ones", async (store) => {
  await assert.rejects(
    store.create("/registry/big/t/n/a", "a".repeat(3_000_000)),
    (e: InferxError) => e.code === "too_large",
  );
  // Not counted by the client's circuit breaker: the next calls go through at once.
  for (let i = 0; i < 3; i++) {
    await store.create(`/registry/big/t/n/ok${i}`, "1");
  }
  assert.equal((await store.get("/registry/big/t/n/ok2"))?.value, "1");
});

etcdTest(
  "a call the client's circuit breaker holds back says that nothing was written",
  async (store, etcd) => {
    await etcd.down("SIGKILL");
    // The first calls fail trying (their tries go out: a write among them might have landed) and
    // open the client's breaker.
    let held: InferxError | undefined;
    for (let i = 0; i < 6 && !held; i++) {
      const err = await store.create(`/registry/cb/t/n/a${i}`, "1").then(
        () => assert.fail("etcd is down"),
        (e: InferxError) => e,
      );
      assert.equal(err.code, "unavailable", err.message);
      if (err.details?.not_written) held = err;
      else assert.match(err.message, /etcd did not answer/);
    }
    assert.ok(held, "the breaker opened and held a call back");
    assert.equal(held.retryable, true);
    assert.match(held.message, /nothing was written/);
    await etcd.up();
    // The breaker lets a call through again after a few seconds, and that one is written.
    const deadline = Date.now() + 15_000;
    while (true) {
      try {
        await store.create("/registry/cb/t/n/after", "1");
        break;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
    assert.equal((await store.get("/registry/cb/t/n/after"))?.value, "1");
  },
  { timeoutMs: 500 },
);

etcdTest("startCompaction() keeps etcd's newest revisions and compacts the rest", async (store) => {
  let rev = await store.create("/registry/k/t/n/a", "0");
  const first = rev;
  for (let i = 1; i < 30; i++) rev = await store.update("/registry/k/t/n/a", String(i), rev);
  store.startCompaction({ keepRevisions: 5, everyMs: 100 });
  await new Promise((r) => setTimeout(r, 300));
  const old = await new Promise<Error | undefined>((resolve) => {
    const w = store.watch("/registry/k/", {
      afterRevision: first,
      onEvent() {
        w.cancel();
        resolve(undefined);
      },
      onError: resolve,
    });
  });
  assert.ok(old instanceof CompactedError, "history before the kept revisions went");
  const events: string[] = [];
  await new Promise<void>((resolve) => {
    const w = store.watch("/registry/k/", {
      afterRevision: rev - 3,
      onEvent(ev) {
        events.push(ev.type === "put" ? ev.kv.value : "-");
        if (events.length === 3) (w.cancel(), resolve());
      },
    });
  });
  assert.deepEqual(events, ["27", "28", "29"], "the newest revisions are kept");
});

Deno.test("keyText() names a store key as callers know its object", () => {
  assert.equal(keyText("/registry/function/t/n/f"), "function t/n/f");
  assert.equal(keyText("/registry/namespace/t2/system/b"), "namespace t2/system/b");
  assert.equal(keyText("/registry/call/t/n/"), "call t/n");
  assert.equal(keyText("/registry/namespace/"), "every namespace");
  assert.equal(keyText("/other"), "/other");
});
