import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { fillLeaving, withTempDir, withTmpfs } from "../common/testing.ts";
import { BatchingAuditLog } from "./batching.ts";
import { openSqliteAudit, SqliteAuditBackend } from "./sqlite.ts";
import { sampleRequest, tokenRows } from "./testing.ts";
import { summarizeUsage } from "./usage.ts";
import type { AuditQuery, PodRow, RequestRow } from "./types.ts";

const pod = (i: number, func = "f", time = 1000 + i): PodRow => ({
  time,
  pod: `p${i}`,
  tenant: "t",
  namespace: "n",
  func,
  node: "n1",
  state: "Ready",
});

let batches = 0;
const batch = (requests: RequestRow[], pods: PodRow[] = []) => ({
  id: `b${++batches}`,
  requests,
  pods,
});

const withDir = (fn: (dir: string) => Promise<void>) => withTempDir("ixaudit-", fn);

// Rows of these tests carry times near 1970: only the retention tests keep the age limit on.
const keepAll = { retainDays: 0 };

Deno.test("SqliteAuditBackend answers newest first, filtered, with every field as written", async () => {
  const b = new SqliteAuditBackend(":memory:", keepAll);
  const full: RequestRow = {
    ...sampleRequest(7, 2000),
    ttfbMs: 1.5,
    coldStart: true,
    pod: "pod-1",
    error: "timeout",
  };
  await b.write(batch([sampleRequest(1, 1000), full], [pod(1), pod(2, "g")]));
  await b.write(batch([], [{ ...pod(3), prevState: "Creating", reason: "why" }]));
  assert.deepEqual(await b.query("requests", {}), [full, sampleRequest(1, 1000)]);
  const rows = await b.query("pods", { tenant: "t", func: "f" });
  assert.deepEqual(rows.map((r) => (r as PodRow).pod), ["p3", "p1"]);
  assert.deepEqual(rows[0], { ...pod(3), prevState: "Creating", reason: "why" });
  assert.deepEqual((await b.query("pods", { limit: 1 })).map((r) => (r as PodRow).pod), ["p3"]);
  assert.deepEqual(await b.query("pods", { since: 1003 }), [rows[0]]);
  assert.deepEqual(await b.query("pods", { tenant: "t", namespace: "other" }), []);
  await b.close();
});

Deno.test("SqliteAuditBackend writes a batch id once, as PostgreSQL does", async () => {
  const b = new SqliteAuditBackend(":memory:", keepAll);
  const once = batch([sampleRequest(1, 1000)]);
  await b.write(once);
  await b.write(once); // a retry after the answer was lost
  assert.equal((await b.query("requests", {})).length, 1);
  await b.close();
});

Deno.test("SqliteAuditBackend answers every /audit filter from an index, without sorting", async () => {
  const b = new SqliteAuditBackend(":memory:", keepAll);
  await b.write(batch([sampleRequest(1)], [pod(1)]));
  const filters: AuditQuery[] = [
    {},
    { tenant: "t" },
    { tenant: "t", namespace: "n" },
    { tenant: "t", namespace: "n", func: "f" },
    { tenant: "t", func: "f" },
  ];
  for (const kind of ["requests", "pods"] as const) {
    for (const f of filters) {
      for (const q of [f, { ...f, since: 1 }]) {
        const plan = b.plan(kind, q).join("; ");
        assert.doesNotMatch(plan, /SCAN r\b(?! USING)/, `${kind} ${JSON.stringify(q)}: ${plan}`);
        assert.match(plan, /USING INDEX/, `${kind} ${JSON.stringify(q)}: ${plan}`);
        assert.doesNotMatch(plan, /TEMP B-TREE/, `${kind} ${JSON.stringify(q)}: ${plan}`);
      }
    }
  }
  await b.close();
});

Deno.test("SqliteAuditBackend deletes rows past AUDIT_RETAIN_DAYS", async () => {
  let now = 100 * 86_400_000;
  const b = new SqliteAuditBackend(":memory:", { retainDays: 2, now: () => now });
  const day = (d: number) => now - d * 86_400_000;
  const gone = { ...sampleRequest(9, day(4)), tenant: "gone" };
  await b.write(
    batch([sampleRequest(1, day(3)), sampleRequest(2, day(1)), gone], [pod(1, "f", day(5))]),
  );
  assert.deepEqual((await b.query("requests", {}) as RequestRow[]).map((r) => r.path), ["/r2"]);
  assert.deepEqual(await b.query("pods", {}), []);
  assert.deepEqual(await b.query("requests", { tenant: "gone" }), []);
  const scopes = b.db.prepare("select count(*) as n from scopes where tenant = 'gone'").get();
  assert.equal(scopes?.n, 0, "names no row refers to are deleted too");
  now += 86_400_000 + 1; // a day later, the next pass (due after a minute) takes /r2 too
  await b.write(batch([sampleRequest(3, now)]));
  assert.deepEqual((await b.query("requests", {}) as RequestRow[]).map((r) => r.path), ["/r3"]);
  await b.close();
});

Deno.test("SqliteAuditBackend deletes rows past their age while nothing is written", async () => {
  let now = 100 * 86_400_000;
  const b = new SqliteAuditBackend(":memory:", {
    retainDays: 1,
    retentionEveryMs: 50,
    now: () => now,
  });
  await b.write(batch([sampleRequest(1, now - 1000)], [pod(1, "f", now - 1000)]));
  assert.equal((await b.query("requests", {})).length, 1);
  now += 86_400_000; // a day on, with no write since
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(await b.query("requests", {}), []);
  assert.deepEqual(await b.query("pods", {}), []);
  await b.close();
});

Deno.test("SqliteAuditBackend keeps its rows under AUDIT_RETAIN_MB, oldest out first, and gives the space back", async () => {
  await withDir(async (dir) => {
    const b = openSqliteAudit(`${dir}/audit.db`, { ...keepAll, retainMB: 1, retentionChunk: 2000 });
    const big = (i: number): RequestRow => ({ ...sampleRequest(i, i), error: "x".repeat(500) });
    for (let i = 0; i < 20; i++) {
      await b.write(batch(Array.from({ length: 500 }, (_, j) => big(i * 500 + j))));
    }
    // Passes run with the writes; one over its chunk runs again with the next.
    for (let i = 0; i < 10 && b.usedBytes() > 1024 * 1024; i++) b.retain();
    assert.ok(b.usedBytes() <= 1024 * 1024, `rows take ${b.usedBytes()} bytes`);
    const kept = await b.query("requests", { limit: 10_000 });
    assert.ok(kept.length > 500 && kept.length < 10_000, `kept ${kept.length}`);
    assert.equal(kept[0].time, 9999, "the newest rows stay");
    assert.equal(kept.at(-1)!.time, 10_000 - kept.length, "the oldest went first, none between");
    b.db.exec("pragma wal_checkpoint(truncate)");
    const size = (await Deno.stat(`${dir}/audit.db`)).size;
    assert.ok(size < 1.5 * 1024 * 1024, `the file shrank to ${size} bytes`);
    await b.close();
  });
});

Deno.test("SqliteAuditBackend takes its rows back under AUDIT_RETAIN_MB as they pass it, not at its next timed pass", async () => {
  await withDir(async (dir) => {
    let now = 1_000_000;
    const b = openSqliteAudit(`${dir}/audit.db`, {
      ...keepAll,
      retainMB: 1,
      retentionChunk: 5000,
      retentionEveryMs: 3_600_000, // the timed passes an hour apart
      now: () => now,
    });
    const big = (i: number): RequestRow => ({ ...sampleRequest(i, now), error: "x".repeat(500) });
    let most = 0;
    for (let i = 0; i < 20; i++) {
      now += 1100; // a burst: 500 calls a second
      await b.write(batch(Array.from({ length: 500 }, (_, j) => big(i * 500 + j))));
      most = Math.max(most, b.usedBytes());
    }
    // Past the limit by at most what a second brought (about 0.4 MB here).
    assert.ok(most < 1.5 * 1024 * 1024, `the rows took ${most} bytes`);
    await b.close();
  });
});

Deno.test("a size pass whose spans overrun its chunk keeps the pod rows: newest stay", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/audit.db`;
    const all = openSqliteAudit(path, { ...keepAll, retainMB: 0 });
    const big = (i: number): RequestRow => ({ ...sampleRequest(i, i), error: "x".repeat(300) });
    // Spans of 700 rows (one a batch and function): a chunk of 1000 takes two of them.
    for (let i = 0; i < 12; i++) {
      await all.write(
        batch(Array.from({ length: 700 }, (_, j) => big(i * 700 + j)), [pod(i, "f", i * 700)]),
      );
    }
    await all.close();
    const b = openSqliteAudit(path, { ...keepAll, retainMB: 1, retentionChunk: 1000 });
    await b.write(batch([], [pod(99, "f", 99_999)]));
    b.retain();
    const pods = await b.query("pods", { limit: 100 });
    assert.ok(pods.length >= 10, `${pods.length} pod rows left of 13`);
    assert.equal(pods[0].pod, "p99", "the newest pod row stays");
    await b.close();
  });
});

Deno.test("openSqliteAudit imports the JSON-lines audit files once and keeps them renamed", async () => {
  await withDir(async (dir) => {
    const line = (r: unknown) => JSON.stringify(r) + "\n";
    await Deno.writeTextFile(`${dir}/requests.jsonl.1`, line(sampleRequest(1, 1)));
    await Deno.writeTextFile(
      `${dir}/requests.jsonl`,
      // A function not seen before, then a row the table cannot take, in one chunk.
      line({ ...sampleRequest(2, 2), tenant: "w" }) + line({ time: 3 }) + '{"cut sh',
    );
    await Deno.writeTextFile(`${dir}/pods.jsonl`, line(pod(1)));
    const b = openSqliteAudit(`${dir}/audit.db`, keepAll);
    assert.deepEqual((await b.query("requests", {}) as RequestRow[]).map((r) => r.path), [
      "/r2",
      "/r1",
    ]);
    assert.deepEqual(await b.query("pods", {}), [pod(1)]);
    assert.equal(b.db.prepare("select count(*) as n from requests_view").get()?.n, 2);
    await b.close();
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.includes("json"));
    assert.deepEqual(names.sort(), [
      "pods.jsonl.migrated",
      "requests.jsonl.1.migrated",
      "requests.jsonl.migrated",
    ]);
    // Put back by hand, they are not imported twice.
    await Deno.rename(`${dir}/pods.jsonl.migrated`, `${dir}/pods.jsonl`);
    const again = openSqliteAudit(`${dir}/audit.db`, keepAll);
    assert.equal((await again.query("pods", {})).length, 1);
    await again.close();
  });
});

Deno.test("BatchingAuditLog over SQLite writes what it buffered and reads it back", async () => {
  await withDir(async (dir) => {
    const log = new BatchingAuditLog(openSqliteAudit(`${dir}/audit.db`, keepAll), {
      flushMs: 10_000,
    });
    for (let i = 0; i < 2500; i++) log.request(sampleRequest(i, i));
    await log.flush();
    assert.equal(log.stats().written, 2500);
    const got = await log.query("requests", { tenant: "t", namespace: "n", func: "f", limit: 3 });
    assert.deepEqual(got.map((r) => r.time), [2499, 2498, 2497]);
    await log.close();
  });
});

Deno.test("SqliteAuditBackend filters request rows by a status range", async () => {
  const b = new SqliteAuditBackend(":memory:", keepAll);
  const req = (i: number, status: number) => ({ ...sampleRequest(i, 1000 + i), status });
  await b.write(batch([req(1, 200), req(2, 503), req(3, 504), req(4, 404)], []));
  const statuses = async (min: number, max: number) =>
    (await b.query("requests", { status: { min, max } })).map((r) => (r as RequestRow).status);
  assert.deepEqual(await statuses(500, 599), [504, 503]);
  assert.deepEqual(await statuses(404, 404), [404]);
  assert.deepEqual(
    (await b.query("requests", { tenant: "t", status: { min: 500, max: 599 } })).length,
    2,
  );
  await b.close();
});

Deno.test("SqliteAuditBackend keeps function versions and token figures, and the log sums their usage", async () => {
  const b = new SqliteAuditBackend(":memory:", keepAll);
  const rows = tokenRows();
  await b.write(batch(rows));
  const back = await b.query("requests", { tenant: "t", func: "f", since: 1000 }) as RequestRow[];
  assert.deepEqual(back.find((r) => r.path === "/r1"), rows[0]);
  const log = new BatchingAuditLog(b, { flushMs: 60_000 });
  const { rowsRead: _, ...want } = summarizeUsage(rows, { since: 1000 });
  const { rowsRead, ...got } = await log.usage({ since: 1000 });
  assert.deepEqual(got, want);
  assert.equal(rowsRead, 5, "only the rows since, read from the index");
  await log.close();
});

Deno.test("SqliteAuditBackend adds the token columns to a database made before them", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/audit.db`;
    const old = new DatabaseSync(path);
    old.exec(`create table requests (id integer primary key, time integer not null,
      tid integer not null, nsid integer not null, fid integer not null, gid integer not null,
      gateway text not null, principal text not null, method text not null, path text not null,
      status integer not null, latency_ms real not null, ttfb_ms real, cold_start integer not null,
      resumed integer not null, pod text, error text)`);
    old.close();
    const b = new SqliteAuditBackend(path, keepAll);
    await b.write(batch([tokenRows()[0]]));
    const [r] = await b.query("requests", {}) as RequestRow[];
    assert.deepEqual([r.version, r.ttftMs, r.completionTokens], [1, 100, 20]);
    await b.close();
  });
});

Deno.test("SqliteAuditBackend keeps an asynchronous call's id and attempt, and adds their columns to an older file", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/audit.db`;
    // A file from before the call columns existed.
    const old = new DatabaseSync(path);
    old.exec(`create table requests (id integer primary key, time integer not null,
      tid integer, nsid integer, fid integer, gid integer, gateway text not null,
      principal text not null, method text not null, path text not null, status integer not null,
      latency_ms real not null, ttfb_ms real, cold_start integer not null,
      resumed integer not null, pod text, error text)`);
    old.close();
    const b = new SqliteAuditBackend(path, keepAll);
    await b.write(batch([{ ...sampleRequest(1, 1000), call: "t:n:c1", attempt: 2 }]));
    const [row] = await b.query("requests", {}) as RequestRow[];
    assert.deepEqual([row.call, row.attempt], ["t:n:c1", 2]);
    await b.close();
  });
});

Deno.test("SqliteAuditBackend reads request rows span by span: newest first across functions and batches", async () => {
  const b = new SqliteAuditBackend(":memory:", keepAll);
  const funcs = ["f", "g", "h"];
  const all: RequestRow[] = [];
  // Five batches; each function's rows within a batch come out of time order, and
  // batches overlap in time (as calls that finish late do).
  let seq = 0;
  for (let n = 0; n < 5; n++) {
    const rows: RequestRow[] = [];
    for (let i = 0; i < 40; i++) {
      const func = funcs[(i * 7 + n) % 3];
      const time = 1000 + n * 30 + ((i * 37) % 60) * 2 + (seq++ % 2) * 0; // distinct enough, overlapping
      rows.push({ ...sampleRequest(seq, time * 1000 + seq), func, namespace: i % 4 ? "n" : "m" });
    }
    all.push(...rows);
    await b.write(batch(rows));
  }
  const expect = (q: AuditQuery) =>
    all.filter((r) =>
      (q.tenant === undefined || r.tenant === q.tenant) &&
      (q.namespace === undefined || r.namespace === q.namespace) &&
      (q.func === undefined || r.func === q.func) &&
      (q.since === undefined || r.time >= q.since)
    ).sort((x, y) => y.time - x.time).slice(0, q.limit ?? 100).map((r) => r.path);
  const queries: AuditQuery[] = [
    {},
    { limit: 7 },
    { limit: 1000 },
    { tenant: "t", func: "g", limit: 5 },
    { tenant: "t", namespace: "m" },
    { tenant: "t", namespace: "n", func: "h", limit: 3 },
    { since: 1_100_000, limit: 15 },
    { tenant: "t", func: "f", since: 1_050_000 },
  ];
  for (const q of queries) {
    const got = (await b.query("requests", q) as RequestRow[]).map((r) => r.path);
    assert.deepEqual(got, expect(q), JSON.stringify(q));
  }
  await b.close();
});

Deno.test("SqliteAuditBackend pages through spans of the same time without losing or repeating one", async () => {
  const b = new SqliteAuditBackend(":memory:", keepAll);
  // 600 functions in one batch, one row each, all at the same time: 600 spans, more than a page.
  const rows = Array.from(
    { length: 600 },
    (_, i) => ({ ...sampleRequest(i, 5000), func: `f${i}` }),
  );
  await b.write(batch(rows));
  const every = await b.query("requests", { limit: 1000 }) as RequestRow[];
  assert.equal(new Set(every.map((r) => r.path)).size, 600);
  const some = await b.query("requests", { tenant: "t", limit: 300 }) as RequestRow[];
  assert.equal(new Set(some.map((r) => r.path)).size, 300);
  await b.close();
});

Deno.test("SqliteAuditBackend keeps reading request rows of a file from before spans, and lets them age out", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/audit.db`;
    // A file as the release before spans wrote it: rows indexed one by one.
    const old = new DatabaseSync(path);
    old.exec(`
      create table scopes (id integer primary key, kind text not null, tenant text not null,
        namespace text not null, func text not null, unique (kind, tenant, namespace, func));
      insert into scopes values (1, 't', 't', '', ''), (2, 'n', 't', 'n', ''), (3, 'f', 't', 'n', 'f'),
        (4, 'g', 't', '', 'f');
      create table requests (id integer primary key, time integer not null, tid integer not null,
        nsid integer not null, fid integer not null, gid integer not null, gateway text not null,
        principal text not null, method text not null, path text not null, status integer not null,
        latency_ms real not null, ttfb_ms real, cold_start integer not null,
        resumed integer not null, pod text, error text, call_id text, attempt integer);
      create index requests_by_time on requests (time);
      create index requests_by_fid on requests (fid, time);
      create view requests_view as
        select r.*, s.tenant, s.namespace, s.func from requests r join scopes s on s.id = r.fid;
      insert into requests (time, tid, nsid, fid, gid, gateway, principal, method, path, status,
        latency_ms, cold_start, resumed) values
        (1000, 1, 2, 3, 4, 'g', 'anonymous', 'POST', '/old1', 200, 1, 0, 0),
        (3000, 1, 2, 3, 4, 'g', 'anonymous', 'POST', '/old3', 200, 1, 0, 0);`);
    old.close();
    let now = 10 * 86_400_000;
    const b = new SqliteAuditBackend(path, { retainDays: 0, now: () => now });
    await b.write(batch([sampleRequest(2, 2000), sampleRequest(4, 4000)]));
    const paths = async (q: AuditQuery = {}) =>
      (await b.query("requests", q) as RequestRow[]).map((r) => r.path);
    assert.deepEqual(await paths(), ["/r4", "/old3", "/r2", "/old1"]);
    assert.deepEqual(await paths({ tenant: "t", namespace: "n", func: "f", limit: 3 }), [
      "/r4",
      "/old3",
      "/r2",
    ]);
    assert.deepEqual(await paths({ since: 2500 }), ["/r4", "/old3"]);
    const view = b.db.prepare("select path from requests_view order by time").all()
      .map((r) => r.path);
    assert.deepEqual(view, ["/old1", "/r2", "/old3", "/r4"]);
    await b.close();
    // Opened again with an age limit: the old rows (and their table) go, the new ones stay.
    now = 2500 + 86_400_000; // a day after 2.5 s
    // Two processes share the file: one ages the rows out, the other keeps reading and retaining.
    const again = new SqliteAuditBackend(path, { retainDays: 1, now: () => now });
    const other = new SqliteAuditBackend(path, { retainDays: 1, now: () => now });
    again.retain();
    for (const reader of [again, other]) {
      assert.deepEqual(
        (await reader.query("requests", {}) as RequestRow[]).map((r) => r.path),
        ["/r4", "/old3"],
      );
    }
    now = 5000 + 86_400_000;
    again.retain();
    for (const reader of [again, other]) {
      assert.deepEqual(await reader.query("requests", { tenant: "t" }), []);
      reader.retain();
    }
    await other.write(batch([sampleRequest(5, now)]));
    assert.deepEqual(
      (await again.query("requests", {}) as RequestRow[]).map((r) => r.path),
      ["/r5"],
    );
    assert.deepEqual(again.db.prepare("select count(*) as n from requests_view").get()?.n, 1);
    await other.close();
    await again.close();
  });
});

Deno.test("SqliteAuditBackend reads a busy function's span from its newest rows down, a window at a time", async () => {
  let now = 0;
  const b = new SqliteAuditBackend(":memory:", { retainDays: 1, now: () => now });
  const all: RequestRow[] = [];
  for (let n = 0; n < 2; n++) {
    const rows = Array.from({ length: 1000 }, (_, i) => {
      const t = n * 1000 + i + 1;
      return { ...sampleRequest(t, t), status: t % 97 === 0 ? 503 : 200 };
    });
    all.push(...rows);
    await b.write(batch(rows.toReversed())); // written newest first: stored oldest first all the same
  }
  const check = async (q: AuditQuery) => {
    const want = all.filter((r) =>
      (q.since === undefined || r.time >= q.since) &&
      (q.status === undefined || (r.status >= q.status.min && r.status <= q.status.max))
    ).sort((x, y) => y.time - x.time).slice(0, q.limit ?? 100).map((r) => r.path);
    const got = (await b.query("requests", q) as RequestRow[]).map((r) => r.path);
    assert.deepEqual(got, want, JSON.stringify(q));
  };
  for (
    const q of [
      { limit: 10 },
      { limit: 1500 },
      { limit: 5000 },
      { since: 1995, limit: 50 },
      { since: 900, limit: 2000 },
      { status: { min: 500, max: 599 }, limit: 5 },
      { status: { min: 500, max: 599 }, limit: 100 },
      { status: { min: 500, max: 599 }, since: 500, limit: 100 },
    ] satisfies AuditQuery[]
  ) await check(q);
  // Retention takes each span's oldest rows: what is left reads the same way.
  now = 86_400_000 + 1500;
  b.retain();
  all.splice(0, 1499);
  for (const q of [{ limit: 10 }, { limit: 5000 }, { since: 1000, limit: 20 }]) await check(q);
  await b.close();
});

Deno.test("SqliteAuditBackend never gives a request id twice, even after the newest rows went", async () => {
  let now = 10 * 86_400_000;
  const b = new SqliteAuditBackend(":memory:", { retainDays: 1, now: () => now });
  await b.write(batch([sampleRequest(1, now)]));
  // A batch written late, its rows old: it takes the highest ids, then retention takes it.
  await b.write(batch([sampleRequest(2, now - 2 * 86_400_000), sampleRequest(3, 5)]));
  const before = Number(b.db.prepare("select max(last_id) as m from request_spans").get()?.m);
  b.retain();
  assert.equal(b.db.prepare("select count(*) as n from request_spans").get()?.n, 1);
  await b.write(batch([sampleRequest(4, now)]));
  const ids = b.db.prepare("select id from requests order by id").all().map((r) => Number(r.id));
  assert.ok(ids.at(-1)! > before, `new id ${ids.at(-1)} above ${before}`);
  now += 1;
  assert.deepEqual((await b.query("requests", {}) as RequestRow[]).map((r) => r.path), [
    "/r4",
    "/r1",
  ]);
  await b.close();
});

Deno.test("SqliteAuditBackend answers as a plain sort of its rows would, through writes and retention", async () => {
  const seed = Number(Deno.env.get("AUDIT_FUZZ_SEED") ?? 1130);
  let x = seed;
  const r = () => (x = (Math.imul(x, 1103515245) + 12345) >>> 0) / 4294967296;
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)];
  for (let trial = 0; trial < 12; trial++) {
    let now = 10_000_000;
    const b = new SqliteAuditBackend(":memory:", {
      retainDays: 1,
      retainMB: 0,
      retentionChunk: 1 + Math.floor(r() * 300),
      now: () => now,
    });
    let n = 0;
    for (let step = 0; step < 25; step++) {
      const rows = Array.from({ length: Math.floor(r() * 60) }, () => ({
        ...sampleRequest(++n, now - Math.floor(r() * 3000 / 7) * 7), // overlapping batches, ties
        tenant: pick(["t", "u"]),
        namespace: pick(["n", "m"]),
        func: pick(["f", "g", "h"]),
        status: r() < 0.2 ? 503 : 200,
      }));
      await b.write(batch(rows));
      now += Math.floor(r() * 2000);
      if (r() < 0.2) b.retain();
      if (r() < 0.05) {
        now += 86_400_000;
        b.retain();
        now -= 86_400_000 - 1;
      }
      for (let k = 0; k < 4; k++) {
        const q: AuditQuery = { limit: pick([1, 2, 3, 5, 10, 50, 1000]) };
        if (r() < 0.6) {
          q.tenant = pick(["t", "u"]);
          if (r() < 0.5) q.namespace = pick(["n", "m"]);
          if (r() < 0.5) q.func = pick(["f", "g", "h"]);
        }
        if (r() < 0.4) q.since = now - Math.floor(r() * 4000);
        // A window's end, or the next page's: rows newer than it are read past, not stopped at.
        if (r() < 0.4) q.until = now - Math.floor(r() * 3000);
        if (r() < 0.3) q.status = { min: 500, max: 599 };
        const where: string[] = [];
        const args: (string | number)[] = [];
        for (const f of ["tenant", "namespace", "func"] as const) {
          if (q[f] !== undefined) (where.push(`${f} = ?`), args.push(q[f]!));
        }
        if (q.since !== undefined) (where.push("time >= ?"), args.push(q.since));
        if (q.until !== undefined) (where.push("time < ?"), args.push(q.until));
        if (q.status) where.push("status between 500 and 599");
        const want = b.db.prepare(
          `select path from requests_view ${
            where.length ? `where ${where.join(" and ")}` : ""
          } order by time desc, id desc limit ?`,
        ).all(...args, q.limit!).map((row) => row.path);
        const got = (await b.query("requests", q) as RequestRow[]).map((row) => row.path);
        assert.deepEqual(
          got,
          want,
          `seed ${seed}, trial ${trial}, step ${step}: ${JSON.stringify(q)}`,
        );
      }
      // Every row in exactly one span of its function, each span's times those of its rows.
      const spans = b.db.prepare("select * from request_spans order by first_id").all();
      for (let i = 1; i < spans.length; i++) {
        assert.ok(Number(spans[i].first_id) > Number(spans[i - 1].last_id), "spans overlap");
      }
      const stray = b.db.prepare(
        `select count(*) as n from requests r where not exists (select 1 from request_spans s
          where r.id between s.first_id and s.last_id and s.fid = r.fid)`,
      ).get();
      assert.equal(stray?.n, 0, "rows outside a span of their function");
      const off = b.db.prepare(
        `select count(*) as n from request_spans s where time_min != (select min(time) from requests r
          where r.id between s.first_id and s.last_id) or time_max < (select max(time) from requests r
          where r.id between s.first_id and s.last_id)`,
      ).get();
      assert.equal(off?.n, 0, "spans whose times are not their rows'");
    }
    await b.close();
  }
});

Deno.test("SqliteAuditBackend: scopes pruned by one process are not used by another sharing the file", async () => {
  await withTempDir("inferx-audit-", async (dir) => {
    const DAY = 86_400_000;
    let now = 100 * DAY;
    const options = { retainDays: 1, now: () => now, retentionEveryMs: 1e12 };
    const a = new SqliteAuditBackend(`${dir}/audit.db`, options);
    const b = new SqliteAuditBackend(`${dir}/audit.db`, options);
    const row = (i: number, tenant: string, func: string) => ({
      ...sampleRequest(i, now),
      tenant,
      func,
    });
    await a.write({ id: "a0", requests: [row(0, "u", "other")], pods: [] });
    await b.write({ id: "b1", requests: [row(1, "t", "f")], pods: [] }); // b caches t/f's ids
    now += 3 * DAY;
    await a.write({ id: "a1", requests: [row(2, "u", "other")], pods: [] });
    a.retain(); // t/f's row expires and its scopes are pruned: their ids are free again
    await a.write({ id: "a2", requests: [row(3, "v", "g")], pods: [] }); // may take those ids
    await b.write({ id: "b2", requests: [row(4, "t", "f")], pods: [] });
    const paths = async (q: AuditQuery) =>
      ((await a.query("requests", q)) as RequestRow[]).map((r) =>
        `${r.path}:${r.tenant}/${r.func}`
      );
    assert.deepEqual(await paths({ tenant: "t", func: "f" }), ["/r4:t/f"]);
    assert.deepEqual(await paths({ tenant: "v" }), ["/r3:v/g"]);
    assert.deepEqual((await paths({})).sort(), ["/r2:u/other", "/r3:v/g", "/r4:t/f"]);
    await a.close();
    await b.close();
  });
});

Deno.test("an emptied audit file is refused, not started over; processes making one together all open it", async () => {
  await withTempDir("ixaudit-", async (dir) => {
    const path = `${dir}/audit.db`;
    const a = openSqliteAudit(path);
    await a.write({ id: "b0", requests: [sampleRequest(0)], pods: [] });
    await a.close();
    await Deno.writeFile(path, new Uint8Array());
    await Deno.remove(`${path}-wal`).catch(() => {});
    assert.throws(() => openSqliteAudit(path), /audit\.db: it is an empty file/);
    assert.equal((await Deno.stat(path)).size, 0, "left as it was");
    // Four processes open one audit that is not there yet, at once (a gateway group's start).
    const fresh = `${dir}/new/audit.db`;
    const code = `import { SqliteAuditBackend } from ${
      JSON.stringify(new URL("./sqlite.ts", import.meta.url).href)
    }; await new SqliteAuditBackend(${JSON.stringify(fresh)}).close(); console.log("ok");`;
    await Deno.mkdir(`${dir}/new`);
    const outs = await Promise.all(
      [0, 1, 2, 3].map(() =>
        new Deno.Command(Deno.execPath(), {
          args: ["eval", code],
          stdout: "piped",
          stderr: "piped",
        })
          .output()
      ),
    );
    for (const o of outs) assert.ok(o.success, new TextDecoder().decode(o.stderr));
    assert.deepEqual([...Deno.readDirSync(`${dir}/new`)].map((e) => e.name).sort(), ["audit.db"]);
  });
});

Deno.test("an audit made on a nearly full disk is refused whole, and made once the space is back", async () => {
  // The reviewer's sweep: with 120-180 KB free, the schema stayed in the new file's log, the
  // checkpoint at close failed without a word, and a file cut short was linked into place.
  for (const kb of [0, 40, 80, 120, 140, 180, 240]) {
    await withTmpfs("4m", async (data) => {
      const path = `${data}/audit/audit.db`;
      await Deno.mkdir(`${data}/audit`);
      const filler = await fillLeaving(data, kb * 1024);
      try {
        await openSqliteAudit(path, keepAll).close();
      } catch (err) {
        assert.match(
          (err as Error).message,
          /^Cannot (make|open) the audit at .*audit\.db: the file system holding it is full/,
          `${kb} KB free: ${(err as Error).message}`,
        );
        assert.deepEqual([...Deno.readDirSync(`${data}/audit`)], [], `${kb} KB free: nothing left`);
      }
      await Deno.remove(filler);
      const audit = openSqliteAudit(path, keepAll);
      try {
        await audit.write(batch([sampleRequest(1, 1000)], []));
        assert.equal((await audit.query("requests", {})).length, 1, `${kb} KB free, then room`);
      } finally {
        await audit.close();
      }
    });
  }
});
