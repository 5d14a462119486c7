import assert from "node:assert/strict";
import { InferxError } from "../common/errors.ts";
import { StateService } from "../statesvc/service.ts";
import { openSqliteStore } from "../store/sqlite.ts";
import type { MetaClient, MetaEvent, MetaWatchOptions, ObjectRef } from "../rpc/types.ts";
import { FuncCache } from "./func_cache.ts";
import { FakeScheduler } from "./testing.ts";
import type { ObjectType } from "../model/keys.ts";

/**
 * The state service, with the function watch's events held until the test
 * lets them through (a watch that lags behind the store), and its reads
 * counted.
 */
class LaggingMeta {
  held: (() => void)[] = [];
  holding = true;
  gets = 0;
  failGets = false;
  /** While set, a read's answer (taken at once) is handed over only when it settles. */
  getGate?: Promise<void>;
  readonly meta: MetaClient;

  constructor(svc: StateService) {
    // deno-lint-ignore no-this-alias
    const self = this;
    this.meta = {
      version: () => svc.version(),
      list: (type, tenant, namespace) => svc.list(type, tenant, namespace),
      create: (input, options) => svc.create(input, options),
      update: (input, options) => svc.update(input, options),
      delete: (ref, revision) => svc.delete(ref, revision),
      get(ref: ObjectRef) {
        self.gets++;
        if (self.failGets) return Promise.reject(new Error("connection refused"));
        const answer = svc.get(ref);
        const gate = self.getGate;
        return gate ? answer.then((r) => gate.then(() => r)) : answer;
      },
      watch(type: ObjectType, o: MetaWatchOptions) {
        if (type !== "function") return svc.watch(type, o);
        return svc.watch(type, {
          ...o,
          onEvent(ev: MetaEvent) {
            if (self.holding) self.held.push(() => o.onEvent(ev));
            else o.onEvent(ev);
          },
        });
      },
    };
  }

  /** Delivers the oldest event held. */
  releaseOne(): void {
    this.held.shift()!();
  }

  /** Delivers what was held, and from now on everything at once. */
  release(): void {
    this.holding = false;
    for (const deliver of this.held.splice(0)) deliver();
  }
}

async function setup() {
  const svc = new StateService(await openSqliteStore());
  await svc.create({
    type: "tenant",
    tenant: "system",
    namespace: "system",
    name: "t",
    object: {},
  });
  await svc.create({ type: "namespace", tenant: "t", namespace: "system", name: "n", object: {} });
  const lag = new LaggingMeta(svc);
  const cache = new FuncCache({ scheduler: new FakeScheduler(), gatewayId: "gw-test" });
  await cache.start(lag.meta);
  const create = (name: string) =>
    svc.create({
      type: "function",
      tenant: "t",
      namespace: "n",
      name,
      object: { spec: { image: "x", policy: { Obj: { max_replica: 1 } } } },
    });
  return { svc, lag, cache, create };
}

/** Lets the state service's watch deliver what it has (into the lagging meta's hold). */
const settle = () => new Promise((r) => setTimeout(r, 20));

Deno.test("a function created a moment ago is found before the watch brings it: the call waits for the watch", async () => {
  const { lag, cache, create } = await setup();
  try {
    await create("g");
    await settle();
    assert.equal(cache.agent("t", "n", "g"), undefined, "the watch has not brought it yet");
    const a = cache.lookup("t", "n", "g");
    const b = cache.lookup("t", "n", "g");
    assert.ok(a instanceof Promise);
    assert.equal(a, b, "callers of one function share one lookup");
    await settle();
    lag.release();
    const agent = await a;
    assert.equal(agent?.id, "t/n/g");
    assert.equal(lag.gets, 1);
    assert.equal(cache.lookup("t", "n", "g"), agent, "known now: no lookup");
    assert.equal(lag.gets, 1);
  } finally {
    cache.stop();
  }
});

Deno.test("a lookup finds nothing for a function that does not exist, nor when the store cannot be read or lookups are over their rate", async () => {
  const { lag, cache, create } = await setup();
  try {
    assert.equal(await cache.lookup("t", "n", "nope"), undefined);
    assert.equal(lag.gets, 1);
    lag.failGets = true;
    assert.equal(await cache.lookup("t", "n", "nope"), undefined, "the cache's answer stands");
    lag.failGets = false;
    await create("g");
    await settle();
    // Names that exist nowhere, a hundred at once: the store reads stop at the rate's burst.
    const ghosts = Array.from({ length: 100 }, (_, i) => cache.lookup("t", "n", `ghost-${i}`));
    assert.equal(cache.lookup("t", "n", "g"), undefined, "over the rate: the cache's answer");
    assert.deepEqual(new Set(await Promise.all(ghosts)), new Set([undefined]));
    assert.ok(lag.gets <= 52, `${lag.gets} store reads`);
    lag.release();
    assert.equal(cache.agent("t", "n", "g")?.id, "t/n/g", "the watch still brings it");
  } finally {
    cache.stop();
  }
});

Deno.test("a watch that does not catch up in time answers unavailable, and the function comes with it later", async () => {
  const { lag, cache, create } = await setup();
  try {
    await create("g");
    await settle();
    await assert.rejects(
      Promise.resolve(cache.lookup("t", "n", "g", 30)),
      (e) =>
        e instanceof InferxError && e.code === "unavailable" && e.retryable === true &&
        /t\/n\/g exists, but this gateway has not received it yet/.test(e.message),
    );
    lag.release();
    assert.equal(cache.agent("t", "n", "g")?.id, "t/n/g");
  } finally {
    cache.stop();
  }
});

Deno.test("a lookup waits for the revision it read, not for an older removal of the same name", async () => {
  const { svc, lag, cache, create } = await setup();
  try {
    const ref = { type: "function" as const, tenant: "t", namespace: "n", name: "g" };
    await create("g");
    await svc.delete(ref);
    await create("g"); // the same name again, at a newer revision
    await settle();
    assert.equal(lag.held.length, 3);
    let answered = false;
    const found = Promise.resolve(cache.lookup("t", "n", "g")).finally(() => answered = true);
    await settle();
    lag.releaseOne(); // the first creation
    lag.releaseOne(); // its deletion
    await settle();
    assert.equal(answered, false, "still waiting for the second creation");
    lag.releaseOne();
    assert.equal((await found)?.id, "t/n/g");
  } finally {
    cache.stop();
  }
});

Deno.test("a function removed around its lookup is not brought back, and not waited for past its removal", async () => {
  const { svc, lag, cache, create } = await setup();
  try {
    const remove = (name: string) =>
      svc.delete({ type: "function", tenant: "t", namespace: "n", name });
    // Removed after the lookup read it: the watch brings its creation, then its removal.
    await create("g");
    await settle();
    const g = cache.lookup("t", "n", "g");
    await settle();
    await remove("g");
    await settle();
    lag.release();
    assert.equal(await g, undefined);
    assert.equal(cache.agent("t", "n", "g"), undefined);
    // Created and removed by the watch before the read's answer came back: no wait at all.
    lag.holding = true;
    await create("h");
    await settle();
    let open = () => {};
    lag.getGate = new Promise((r) => open = r);
    const t0 = performance.now();
    const h = cache.lookup("t", "n", "h", 5_000);
    await settle();
    await remove("h");
    await settle();
    lag.release();
    open();
    assert.equal(await h, undefined);
    assert.ok(performance.now() - t0 < 2_000, "no wait for a revision the watch went past");
  } finally {
    cache.stop();
  }
});

Deno.test("stopping the cache answers the calls still waiting for the watch", async () => {
  const { cache, create } = await setup();
  await create("g");
  await settle();
  const found = Promise.resolve(cache.lookup("t", "n", "g", 60_000));
  await settle();
  const t0 = performance.now();
  cache.stop();
  await assert.rejects(found, (e) => e instanceof InferxError && e.code === "unavailable");
  assert.ok(performance.now() - t0 < 1_000, "answered when stopped, not when its wait ran out");
});
