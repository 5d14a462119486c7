import assert from "node:assert/strict";
import { Counter, Histogram, Registry } from "prom-client";
import { type Exchanged, GroupMetrics } from "./group.ts";
import { freePort } from "../common/net.ts";

const TOKEN = "0123456789abcdef".repeat(4);

/** A member's registry: a counter and a histogram by label, which it can lose (a restart). */
function member() {
  let registry = new Registry();
  let calls: Counter<"code">;
  let seconds: Histogram<"code">;
  const make = () => {
    registry = new Registry();
    calls = new Counter({
      name: "calls_total",
      help: "c",
      labelNames: ["code"],
      registers: [registry],
    });
    seconds = new Histogram({
      name: "call_seconds",
      help: "s",
      labelNames: ["code"],
      buckets: [0.1, 1],
      registers: [registry],
    });
  };
  make();
  return {
    add(n: number, code = "200", secs = 0.5) {
      calls.inc({ code }, n);
      for (let i = 0; i < n; i++) seconds.observe({ code }, secs);
    },
    restart: make,
    get registry() {
      return registry;
    },
  };
}

/** The group's totals as `group` answers a scrape: calls and histogram counts by code. */
async function total(group: GroupMetrics) {
  const text = await (await group.registry()).metrics();
  const value = (series: string) =>
    Number(new RegExp(`^${series.replace(/[{}"+]/g, "\\$&")} (\\S+)$`, "m").exec(text)?.[1] ?? 0);
  // Buckets never decrease along `le`.
  for (const code of ["200", "404"]) {
    const b = ["0.1", "1", "+Inf"].map((le) =>
      value(`call_seconds_bucket{le="${le}",code="${code}"}`)
    );
    assert.ok(b[0] <= b[1] && b[1] <= b[2], `buckets of ${code}: ${b}`);
  }
  return {
    ok: value('calls_total{code="200"}'),
    missing: value('calls_total{code="404"}'),
    count: value('call_seconds_count{code="200"}') + value('call_seconds_count{code="404"}'),
  };
}

/** `v` as it comes out of JSON: what a member gets over the wire, sharing nothing with `v`. */
const wire = <T>(v: T): T => v === undefined ? v : JSON.parse(JSON.stringify(v));

/**
 * `n` members on ports 1..n, each answering the others as its server would
 * (through JSON); `down` members answer none.
 */
function group(n: number) {
  const members = Array.from({ length: n }, () => member());
  const views: GroupMetrics[] = [];
  const down = new Set<number>();
  const ports = members.map((_, i) => i + 1);
  const make = (i: number) =>
    views[i] = new GroupMetrics(
      { index: i, ports, token: TOKEN },
      members[i].registry,
      async (port, path, body) => {
        const j = port - 1;
        if (down.has(j)) throw new Error("slow");
        const them = views[j];
        if (path.startsWith("/seen.json")) return wire(them.seen(Number(path.split("=")[1])));
        const answer = await them.told(wire(body));
        if (!answer) throw new Error("status 400");
        return wire(answer);
      },
    );
  members.forEach((_, i) => make(i));
  return {
    members,
    views,
    down,
    /** Member `i`'s process restarts: its registry and its group view are new; it recalls its past. */
    async restart(i: number) {
      members[i].restart();
      make(i);
      await views[i].recall();
    },
  };
}

/** Two members, `a` and `b`. */
function pair() {
  const g = group(2);
  const names = new Map([["a", 0], ["b", 1]]);
  return {
    a: g.members[0],
    b: g.members[1],
    down: {
      add: (name: string) => g.down.add(names.get(name)!),
      delete: (name: string) => g.down.delete(names.get(name)!),
    },
    get ga() {
      return g.views[0];
    },
    get gb() {
      return g.views[1];
    },
    restartB: () => g.restart(1),
  };
}

Deno.test("the group's counters never go down: a member slow to answer, or restarted, counts what it had", async () => {
  const p = pair();
  p.a.add(100);
  p.b.add(100);
  assert.equal((await total(p.ga)).ok, 200);
  p.down.add("b"); // b misses a scrape: its last answer counts
  p.a.add(1);
  assert.equal((await total(p.ga)).ok, 201);
  p.down.delete("b");
  p.b.add(1);
  assert.equal((await total(p.ga)).ok, 202);
  await p.restartB(); // back at 0: what it had counted is carried
  p.b.add(3);
  assert.equal((await total(p.ga)).ok, 205);
});

Deno.test("after a member's restart, every member answers the same sums, series it has not counted again included", async () => {
  const p = pair();
  p.a.add(12, "404", 0.05);
  p.b.add(12, "200");
  p.b.add(5, "404", 0.05);
  // Both members have seen each other before the restart.
  assert.deepEqual(await total(p.ga), await total(p.gb));
  const before = await total(p.ga);
  assert.deepEqual(before, { ok: 12, missing: 17, count: 29 });
  await p.restartB();
  // b has counted nothing since: the 404s and 200s it had still count, whoever answers.
  assert.deepEqual(await total(p.ga), before);
  assert.deepEqual(await total(p.gb), before);
  p.b.add(6, "200", 0.05); // counted again after the restart, with a (restarted) count of 6 < 12
  p.a.add(6, "404", 0.05);
  const after = { ok: 18, missing: 23, count: 41 };
  for (let i = 0; i < 3; i++) {
    assert.deepEqual(await total(p.ga), after, `scrape ${i} through a`);
    assert.deepEqual(await total(p.gb), after, `scrape ${i} through b`);
  }
  // A second restart carries the first's carry too.
  await p.restartB();
  assert.deepEqual(await total(p.ga), after);
  assert.deepEqual(await total(p.gb), after);
});

Deno.test("a member scraped through itself and then restarted: the sums do not go down, whoever answers", async () => {
  const p = pair();
  p.a.add(2);
  p.b.add(5);
  assert.equal((await total(p.gb)).ok, 7); // shown through b, b's 5 in it
  await p.restartB(); // killed before a scrape through a ever asked it
  assert.equal((await total(p.ga)).ok, 7);
  assert.equal((await total(p.gb)).ok, 7);
  p.b.add(1);
  assert.equal((await total(p.ga)).ok, 8);
  assert.equal((await total(p.gb)).ok, 8);
});

Deno.test("a member that counted on after the others last asked it, then was scraped through itself and restarted, keeps its count", async () => {
  const p = pair();
  p.b.add(3);
  assert.equal((await total(p.ga)).ok, 3); // a has seen b's 3
  p.b.add(4);
  assert.equal((await total(p.gb)).ok, 7); // shown through b: 7
  await p.restartB();
  assert.equal((await total(p.ga)).ok, 7);
  assert.equal((await total(p.gb)).ok, 7);
});

Deno.test("an answer that arrives after a newer one (of the same life, or of a life over since) is not taken", async () => {
  const a = new GroupMetrics({ index: 0, ports: [1, 2], token: TOKEN }, new Registry());
  let registry = new Registry();
  let calls = new Counter({ name: "calls_total", help: "c", registers: [registry] });
  let b = new GroupMetrics({ index: 1, ports: [1, 2], token: TOKEN }, registry);
  const told = async (g: GroupMetrics) => wire({ ...await g.answer(), port: 2, yourBase: [] });
  const shown = () => a.seen(2).find((m) => m.name === "calls_total")?.values[0].value;
  calls.inc(3);
  const older = await told(b);
  calls.inc(4);
  const newer = await told(b);
  await a.told(newer);
  await a.told(older); // crossed on the way
  assert.equal(shown(), 7);
  // b restarts (its base 7, as the others saw it), counts 1; then its old life's answer comes.
  registry = new Registry();
  calls = new Counter({ name: "calls_total", help: "c", registers: [registry] });
  b = new GroupMetrics({ index: 1, ports: [1, 2], token: TOKEN }, registry);
  calls.inc(1);
  await a.told(await told(b));
  assert.equal(shown(), 8);
  await a.told(newer);
  assert.equal(shown(), 8, "not 7 + 7 + 1");
});

Deno.test("what is not a member's answer, or from no member of the group, is not taken", async () => {
  const a = new GroupMetrics({ index: 0, ports: [1, 2], token: TOKEN }, new Registry());
  const registry = new Registry();
  new Counter({ name: "calls_total", help: "c", registers: [registry] }).inc(5);
  const b = new GroupMetrics({ index: 1, ports: [1, 2], token: TOKEN }, registry);
  const good = wire({ ...await b.answer(), port: 2, yourBase: [] });
  assert.equal(await a.told({ life: "x" }), undefined);
  assert.equal(await a.told({ ...good, port: 9 }), undefined);
  assert.equal(await a.told({ ...good, port: 1 }), undefined); // its own port
  // Series whose values are not numbers: refused whole, nothing of it taken.
  const bad = wire(good);
  (bad.metrics[0] as { values: unknown }).values = 3;
  assert.equal(await a.told(bad), undefined);
  const nan = wire(good);
  (nan.base as unknown[]).push({ name: "x", type: "counter", values: [{ value: "5" }] });
  assert.equal(await a.told(nan), undefined);
  assert.deepEqual(a.seen(2), []);
  assert.ok(await a.told(good));
  assert.equal(a.seen(2).find((m) => m.name === "calls_total")?.values[0].value, 5);
});

Deno.test("two members restarting one after the other: the sums hold through either", async () => {
  const g = group(2);
  const [a, b] = g.members;
  a.add(10);
  b.add(5);
  assert.equal((await total(g.views[0])).ok, 15);
  await g.restart(0);
  for (const v of [0, 1, 0, 1]) assert.equal((await total(g.views[v])).ok, 15, `through ${v}`);
  await g.restart(1);
  for (const v of [0, 1, 0, 1]) assert.equal((await total(g.views[v])).ok, 15, `through ${v}`);
  a.add(1);
  b.add(2);
  for (const v of [0, 1]) assert.equal((await total(g.views[v])).ok, 18, `through ${v}`);
});

Deno.test("three members: what one scrape showed of a member holds through every member after its restart", async () => {
  const g = group(3);
  const [, b] = g.members;
  b.add(5);
  assert.equal((await total(g.views[0])).ok, 5); // through A: b at 5
  b.add(3);
  assert.equal((await total(g.views[2])).ok, 8); // through C only: b at 8
  await g.restart(1);
  for (const v of [0, 1, 2, 0]) assert.equal((await total(g.views[v])).ok, 8, `through ${v}`);
  // C was away when b restarted (b's recall reached A only): the first scrape through C, or
  // through b, brings b's base up, and nothing shown goes down after.
  b.add(1);
  assert.equal((await total(g.views[2])).ok, 9);
  g.down.add(2);
  await g.restart(1);
  g.down.delete(2);
  const seen = [];
  for (const v of [2, 1, 0, 2, 1, 0]) seen.push((await total(g.views[v])).ok);
  assert.deepEqual(seen, [9, 9, 9, 9, 9, 9]);
});

Deno.test("a member whose private metrics port is taken says which port it is", () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (taken.addr as Deno.NetAddr).port;
  try {
    const group = new GroupMetrics({ index: 1, ports: [1, port], token: TOKEN }, new Registry());
    assert.throws(
      () => group.serve(),
      new RegExp(`127\\.0\\.0\\.1:${port} \\(the private metrics port of gateway member 1\\)`),
    );
  } finally {
    taken.close();
  }
});

Deno.test("a series carried over a member's restart goes once its function is deleted", async () => {
  const alive = new Set(["t/n/f", "t/n/g"]);
  const registries = [new Registry(), new Registry()];
  const counter = (r: Registry) =>
    new Counter({ name: "fn_total", help: "c", labelNames: ["function"], registers: [r] });
  let calls = registries.map(counter);
  const lives = [crypto.randomUUID(), crypto.randomUUID()];
  let seq = 0;
  const answer = (i: number) => async (): Promise<Exchanged> =>
    wire({
      life: lives[i],
      seq: ++seq,
      metrics: await registries[i].getMetricsAsJSON(),
      base: [],
      yourBase: [],
    });
  const exists = (f: string) => alive.has(f);
  const ga = new GroupMetrics(
    { index: 0, ports: [1, 2], token: TOKEN },
    registries[0],
    (_port, path) => path.startsWith("/seen") ? Promise.resolve([]) : answer(1)(),
    exists,
  );
  calls[1].inc({ function: "t/n/f" }, 5);
  calls[1].inc({ function: "t/n/g" }, 7);
  calls[1].inc({ function: "(none)" }, 2);
  const text = async () => await (await ga.registry()).metrics();
  assert.match(await text(), /fn_total\{function="t\/n\/f"\} 5/);
  // Member 1 restarts: what it had counted is carried...
  registries[1] = new Registry();
  lives[1] = crypto.randomUUID();
  calls = [calls[0], counter(registries[1])];
  assert.match(await text(), /fn_total\{function="t\/n\/g"\} 7/);
  // ...until its function is deleted: then its carried series goes too ("(none)" stays).
  alive.delete("t/n/g");
  const after = await text();
  assert.doesNotMatch(after, /function="t\/n\/g"/);
  assert.match(after, /fn_total\{function="t\/n\/f"\} 5/);
  assert.match(after, /fn_total\{function="\(none\)"\} 2/);
});

Deno.test("a member's private port answers only requests with the group's secret, which members send", async () => {
  const ports = [freePort(), freePort()];
  const registries = [new Registry(), new Registry()];
  new Counter({ name: "calls_total", help: "c", registers: [registries[1]] }).inc(3);
  const a = new GroupMetrics({ index: 0, ports, token: TOKEN }, registries[0]);
  const b = new GroupMetrics({ index: 1, ports, token: TOKEN }, registries[1]);
  const server = b.serve();
  try {
    const url = `http://127.0.0.1:${ports[1]}/metrics.json`;
    for (const headers of [{}, { "x-inferx-group-token": "wrong" }] as Record<string, string>[]) {
      const refused = await fetch(url, { headers });
      assert.equal(refused.status, 401, JSON.stringify(headers));
      await refused.body?.cancel();
    }
    const seen = await fetch(`http://127.0.0.1:${ports[1]}/seen.json?port=1`);
    assert.equal(seen.status, 401);
    await seen.body?.cancel();
    const told = await fetch(url, { method: "POST", body: "{}" });
    assert.equal(told.status, 401);
    await told.body?.cancel();
    // With it, a body that is not a member's answer is refused.
    const bad = await fetch(url, {
      method: "POST",
      headers: { "x-inferx-group-token": TOKEN },
      body: '{"life":"x"}',
    });
    assert.equal(bad.status, 400);
    await bad.body?.cancel();
    // The other member asks with it, and counts what b counted; b keeps what a showed.
    new Counter({ name: "calls_total", help: "c", registers: [registries[0]] }).inc(2);
    assert.match(await (await a.registry()).metrics(), /calls_total 5/);
    assert.equal(b.seen(ports[0]).find((m) => m.name === "calls_total")?.values[0].value, 2);
  } finally {
    await server.close();
  }
});
