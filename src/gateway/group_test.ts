import assert from "node:assert/strict";
import { Counter, Histogram, Registry } from "prom-client";
import { GroupMetrics } from "./group.ts";
import type { InferxError } from "../common/errors.ts";
import { freePort } from "../common/net.ts";

const TOKEN = "0123456789abcdef".repeat(4);

/** A member's registry: a counter and a histogram by label, which it can lose (a restart). */
function member() {
  let registry = new Registry();
  let calls: Counter<"code" | "function">;
  let seconds: Histogram<"code">;
  const make = () => {
    registry = new Registry();
    calls = new Counter({
      name: "calls_total",
      help: "c",
      labelNames: ["code", "function"],
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
    /** `n` calls of function `func`, a series of their own. */
    call(func: string, n: number) {
      calls.inc({ code: "200", function: func }, n);
    },
    /** The series of `func` go (a function deleted: its metrics pruned). */
    forget(func: string) {
      calls.remove({ code: "200", function: func });
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
 * (through JSON); `down` members answer none. `exists`: which functions exist.
 */
function group(n: number, exists?: (func: string) => boolean) {
  const members = Array.from({ length: n }, () => member());
  const views: GroupMetrics[] = [];
  const down = new Set<number>();
  const ports = members.map((_, i) => i + 1);
  const make = (i: number) =>
    views[i] = new GroupMetrics(
      { index: i, ports, token: TOKEN },
      members[i].registry,
      async (port, path, body) => {
        const them = views[port - 1];
        if (down.has(port - 1)) throw new Error("slow");
        if (path === "/metrics.json") return wire(await them.answer());
        if (body !== undefined) {
          if (!them.takeShown(wire(body))) throw new Error("status 400");
          return null;
        }
        return wire(them.shown(Number(path.split("=")[1])));
      },
      exists,
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

/** Two members, `a` (the first) and `b`. */
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

/** Every series of a scrape's text, by name and labels. */
function seriesOf(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

/** Scrapes through members `through` in turn; fails when a series goes down or away between two. */
async function neverDown(g: ReturnType<typeof group>, through: number[]): Promise<number> {
  let before: Map<string, number> | undefined;
  let ok = 0;
  for (const i of through) {
    const now = seriesOf(await (await g.views[i].registry()).metrics());
    for (const [k, v] of before ?? []) {
      assert.ok((now.get(k) ?? -1) >= v, `${k}: ${v} then ${now.get(k)} (through ${i})`);
    }
    before = now;
    ok = now.get('calls_total{code="200"}') ?? 0;
  }
  return ok;
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

Deno.test("reports that cross on their way do not lower what the first member keeps", async () => {
  const g = group(2);
  const b = g.views[1];
  const registry = new Registry();
  const calls = new Counter({ name: "calls_total", help: "c", registers: [registry] });
  // A member whose reports are taken apart (its base: nothing kept of it yet).
  const reporter = new GroupMetrics(
    { index: 1, ports: [1, 2], token: TOKEN },
    registry,
    (_port, _path, body) => Promise.resolve(body === undefined ? [] : null),
  );
  calls.inc(3);
  const older = wire({ port: 2, metrics: (await reporter.answer()).metrics });
  calls.inc(4);
  const newer = wire({ port: 2, metrics: (await reporter.answer()).metrics });
  const first = g.views[0];
  assert.ok(first.takeShown(newer));
  assert.ok(first.takeShown(older));
  assert.equal(first.shown(2).find((m) => m.name === "calls_total")?.values[0].value, 7);
  void b;
});

Deno.test("what is not a member's report, or from no member of the group, is not taken", async () => {
  const g = group(2);
  const first = g.views[0];
  const good = wire({ port: 2, metrics: (await g.views[1].answer()).metrics });
  assert.equal(first.takeShown({ port: 9, metrics: good.metrics }), false);
  assert.equal(first.takeShown({ port: 1, metrics: good.metrics }), false); // its own port
  assert.equal(
    first.takeShown({ port: 2, metrics: [{ name: "x", type: "counter", values: 3 }] }),
    false,
  );
  assert.equal(
    first.takeShown({
      port: 2,
      metrics: [{ name: "x", type: "counter", values: [{ value: "5" }] }],
    }),
    false,
  );
  // Series without how to add them up (prom-client's aggregator) would break every scrape after.
  const bare = wire(good);
  delete (bare.metrics[0] as { aggregator?: string }).aggregator;
  assert.equal(first.takeShown(bare), false);
  // Only the first member keeps reports.
  assert.equal(g.views[1].takeShown({ port: 1, metrics: good.metrics }), false);
  assert.deepEqual(first.shown(2), []);
  assert.ok(first.takeShown(good));
});

Deno.test("two members restarting one after the other: the sums hold through either", async () => {
  const g = group(2);
  const [a, b] = g.members;
  a.add(10);
  b.add(5);
  assert.equal(await neverDown(g, [0, 1]), 15);
  await g.restart(1);
  assert.equal(await neverDown(g, [0, 1, 0, 1]), 15);
  a.add(1);
  b.add(2);
  assert.equal(await neverDown(g, [0, 1]), 18);
});

Deno.test("members restarting one after another with no scrape between keep what was shown", async () => {
  const g = group(3);
  g.members[1].add(3);
  g.members[2].add(4);
  assert.equal(await neverDown(g, [1]), 7);
  await g.restart(1);
  await g.restart(2);
  await g.restart(1);
  assert.equal(await neverDown(g, [1, 2, 0, 2, 1]), 7);
});

Deno.test("three members: what one scrape showed of a member holds through every member", async () => {
  const g = group(3);
  const [, b] = g.members;
  b.add(5);
  assert.equal(await neverDown(g, [0]), 5);
  b.add(3);
  assert.equal(await neverDown(g, [2]), 8); // through C only
  await g.restart(1);
  assert.equal(await neverDown(g, [2, 0, 1, 0]), 8);
  // A member away when another restarts, then scrapes through each.
  b.add(1);
  assert.equal(await neverDown(g, [2]), 9);
  g.down.add(2);
  await g.restart(1);
  assert.equal(await neverDown(g, [0, 1, 0]), 9);
  g.down.delete(2);
  assert.equal(await neverDown(g, [2, 1, 0, 2]), 9);
});

Deno.test("a member that stops answering counts with the most it ever showed, through any member", async () => {
  const g = group(3);
  const [, b] = g.members;
  b.add(3);
  assert.equal(await neverDown(g, [0]), 3);
  b.add(4);
  assert.equal(await neverDown(g, [2]), 7);
  g.down.add(1);
  assert.equal(await neverDown(g, [2, 0, 2]), 7);
});

Deno.test("while the first member does not answer, the others show nothing of the group (503) rather than less", async () => {
  const g = group(3);
  g.members[0].add(100);
  g.members[1].add(1);
  assert.equal(await neverDown(g, [0]), 101);
  g.down.add(0);
  for (const i of [1, 2]) {
    await assert.rejects(
      g.views[i].registry(),
      (e: InferxError) =>
        e.code === "unavailable" && /first process did not answer/.test(e.message),
    );
  }
  // A member restarted meanwhile has no base yet: it answers nothing either, and takes its base
  // at its next answer once the first is back.
  await g.restart(1);
  await assert.rejects(g.views[2].registry(), (e: InferxError) => e.code === "unavailable");
  g.down.delete(0);
  assert.equal(await neverDown(g, [0, 1, 2, 1]), 101);
});

Deno.test("the sums of fractions are added in the members' order, the same through each", async () => {
  const g = group(3);
  g.members[0].add(1, "200", 0.1);
  g.members[1].add(1, "200", 0.1);
  g.members[2].add(1, "200", 1.1);
  const sums = [];
  for (const i of [2, 0, 1]) {
    const text = await (await g.views[i].registry()).metrics();
    sums.push(seriesOf(text).get('call_seconds_sum{code="200"}'));
  }
  assert.equal(new Set(sums).size, 1, String(sums));
});

Deno.test("random restarts, stops and scrapes of 2 to 4 members never take a series down", async () => {
  let seed = 7;
  const rand = (n: number) => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % n;
  for (let run = 0; run < 30; run++) {
    const g = group(2 + run % 3);
    const n = g.members.length;
    let before: Map<string, number> | undefined;
    for (let step = 0; step < 40; step++) {
      const i = rand(n);
      const what = rand(10);
      if (what < 4) g.members[i].add(1 + rand(3), rand(2) ? "200" : "404", rand(2) ? 0.05 : 0.5);
      else if (what < 6 && i > 0) await g.restart(i);
      else if (what < 7 && i > 0) g.down.has(i) ? g.down.delete(i) : g.down.add(i);
      else {
        const now = seriesOf(await (await g.views[i].registry()).metrics());
        for (const [k, v] of before ?? []) {
          assert.ok(
            (now.get(k) ?? -1) >= v,
            `run ${run} step ${step}: ${k}: ${v} then ${now.get(k)}`,
          );
        }
        before = now;
      }
    }
  }
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
  const g = group(2, (f) => alive.has(f));
  const b = g.members[1];
  b.call("t/n/f", 5);
  b.call("t/n/g", 7);
  b.call("(none)", 2);
  const text = async () => await (await g.views[0].registry()).metrics();
  assert.match(await text(), /calls_total\{code="200",function="t\/n\/f"\} 5/);
  // b restarts: what it had counted is carried...
  await g.restart(1);
  assert.match(await text(), /calls_total\{code="200",function="t\/n\/g"\} 7/);
  // ...until its function is deleted: then its carried series goes too ("(none)" stays).
  alive.delete("t/n/g");
  const after = await text();
  assert.doesNotMatch(after, /function="t\/n\/g"/);
  assert.match(after, /calls_total\{code="200",function="t\/n\/f"\} 5/);
  assert.match(after, /calls_total\{code="200",function="\(none\)"\} 2/);
  // Made again, it starts from 0, a restart later too.
  alive.add("t/n/g");
  b.call("t/n/g", 1);
  assert.match(await text(), /calls_total\{code="200",function="t\/n\/g"\} 1/);
  await g.restart(1);
  assert.match(await text(), /calls_total\{code="200",function="t\/n\/g"\} 1/);
});

Deno.test("a member's private port answers only requests with the group's secret, which members send", async () => {
  const ports = [freePort(), freePort()];
  const registries = [new Registry(), new Registry()];
  new Counter({ name: "calls_total", help: "c", registers: [registries[1]] }).inc(3);
  const a = new GroupMetrics({ index: 0, ports, token: TOKEN }, registries[0]);
  const b = new GroupMetrics({ index: 1, ports, token: TOKEN }, registries[1]);
  const servers = [a.serve(), b.serve()];
  try {
    const url = `http://127.0.0.1:${ports[1]}/metrics.json`;
    for (const headers of [{}, { "x-inferx-group-token": "wrong" }] as Record<string, string>[]) {
      const refused = await fetch(url, { headers });
      assert.equal(refused.status, 401, JSON.stringify(headers));
      await refused.body?.cancel();
    }
    const shownUrl = `http://127.0.0.1:${ports[0]}/shown.json`;
    const kept = await fetch(`${shownUrl}?port=${ports[1]}`);
    assert.equal(kept.status, 401);
    await kept.body?.cancel();
    // With it, a body that is not a member's report is refused.
    const bad = await fetch(shownUrl, {
      method: "POST",
      headers: { "x-inferx-group-token": TOKEN },
      body: '{"port":1}',
    });
    assert.equal(bad.status, 400);
    await bad.body?.cancel();
    // The first member asks with it and counts what b counted; b reported it first.
    new Counter({ name: "calls_total", help: "c", registers: [registries[0]] }).inc(2);
    assert.match(await (await a.registry()).metrics(), /calls_total 5/);
    assert.equal(a.shown(ports[1]).find((m) => m.name === "calls_total")?.values[0].value, 3);
    // And b, through the wire, finds what it counted in a life before.
    const again = new GroupMetrics({ index: 1, ports, token: TOKEN }, new Registry());
    await again.recall();
    assert.match(await (await again.registry()).metrics(), /calls_total 5/);
  } finally {
    for (const s of servers) await s.close();
  }
});
