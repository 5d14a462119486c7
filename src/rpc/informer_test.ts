import assert from "node:assert/strict";
import { reset } from "@logtape/logtape";
import { logLines, until } from "../common/testing.ts";
import { StateService } from "../statesvc/service.ts";
import { openSqliteStore } from "../store/sqlite.ts";
import type { ObjectType } from "../model/keys.ts";
import { startInformer } from "./informer.ts";
import type { MetaClient, MetaWatchOptions } from "./types.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const tenant = (name: string) => ({
  type: "tenant" as const,
  tenant: "system",
  namespace: "system",
  name,
});

Deno.test("an informer keeps one watch when a watch error and its periodic resync come together", async () => {
  const store = await openSqliteStore();
  const svc = new StateService(store);
  // The state service's client, with watches a test can end as a broken stream would.
  const live = new Set<{ options: MetaWatchOptions; cancel(): void }>();
  const meta = {
    list: (t: ObjectType, a?: string, b?: string) => svc.list(t, a, b),
    watch(type: ObjectType, options: MetaWatchOptions) {
      let dead = false;
      const w = svc.watch(type, { ...options, onEvent: (e) => dead || options.onEvent(e) });
      const entry = {
        options,
        cancel() {
          dead = true;
          w.cancel();
          live.delete(entry);
        },
      };
      live.add(entry);
      return entry;
    },
  } as unknown as MetaClient;
  const upserts: string[] = [];
  const removes: string[] = [];
  const informer = await startInformer(meta, "tenant", {
    upsert: (r) => upserts.push(r.name),
    remove: (r) => removes.push(r.name),
  }, { resyncMs: 300, retryMs: 200 });
  try {
    await sleep(150);
    // The stream breaks 150 ms before the periodic resync: both list again.
    for (const e of [...live]) (e.cancel(), e.options.onError?.(new Error("watch ended")));
    await sleep(400);
    assert.equal(live.size, 1, "one watch");
    upserts.length = 0;
    await svc.create({ ...tenant("t1"), object: {} });
    await sleep(50);
    assert.deepEqual(upserts, ["t1"], "each change once");
    await svc.delete(tenant("t1"));
    await sleep(50);
    assert.deepEqual(removes, ["t1"]);
  } finally {
    informer.stop();
  }
  assert.equal(live.size, 0, "no watch after stop()");
  upserts.length = 0;
  await svc.create({ ...tenant("t2"), object: {} });
  await sleep(50);
  assert.deepEqual(upserts, []);
  await store.close();
});

Deno.test("an informer passes over a record its handler cannot take, in its list and its watch, and goes on", async () => {
  const store = await openSqliteStore();
  const svc = new StateService(store);
  const lines = await logLines();
  try {
    await svc.create({ ...tenant("bad1"), object: {} });
    await svc.create({ ...tenant("good1"), object: {} });
    const taken: string[] = [];
    const informer = await startInformer(svc, "tenant", {
      upsert(r) {
        if (r.name.startsWith("bad")) throw new Error(`cannot read ${r.name}`);
        taken.push(r.name);
      },
      remove: () => {},
    });
    try {
      await svc.create({ ...tenant("bad2"), object: {} });
      await svc.create({ ...tenant("good2"), object: {} });
      await until("the watch to bring good2", () => taken.includes("good2"));
      assert.deepEqual(taken.filter((n) => n !== "system"), ["good1", "good2"]);
      const said = lines.filter((l) => l.startsWith("Cannot take tenant"));
      assert.equal(said.length, 2, said.join("\n"));
      assert.match(
        said[0],
        /system\/system\/bad1, passed over until it is written again: cannot read/,
      );
    } finally {
      informer.stop();
    }
  } finally {
    await reset();
    await store.close();
  }
});

Deno.test("an informer that cannot list says so at the first try and every 20th, and when it lists again", async () => {
  const store = await openSqliteStore();
  const svc = new StateService(store);
  let down = false;
  let tries = 0;
  const meta = new Proxy(svc, {
    get(target, prop, receiver) {
      if (prop === "list") {
        return (...args: Parameters<MetaClient["list"]>) => {
          if (!down) return target.list(...args);
          if (++tries === 45) down = false; // back after 45 failed lists
          return Promise.reject(new Error("state service away"));
        };
      }
      const v = Reflect.get(target, prop, receiver);
      return typeof v === "function" ? v.bind(target) : v;
    },
  }) as unknown as MetaClient;
  const lines = await logLines();
  const informer = await startInformer(meta, "tenant", { upsert() {}, remove() {} }, {
    retryMs: 5,
    resyncMs: 10, // lists again soon: while `down`, that fails, and is tried again
  });
  try {
    down = true;
    await until("it to list again", () => lines.some((l) => l.startsWith("Listed tenant")));
    const said = lines.filter((l) => l.startsWith("Cannot list tenant"));
    assert.deepEqual(said.map((l) => /\((\d+) tries\)/.exec(l)?.[1]), ["1", "21", "41"]);
  } finally {
    informer.stop();
    await reset();
    await store.close();
  }
});
