import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { withTempDir } from "../common/testing.ts";
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

Deno.test("openSqliteAudit imports the JSON-lines audit files once and keeps them renamed", async () => {
  await withDir(async (dir) => {
    const line = (r: unknown) => JSON.stringify(r) + "\n";
    await Deno.writeTextFile(`${dir}/requests.jsonl.1`, line(sampleRequest(1, 1)));
    await Deno.writeTextFile(
      `${dir}/requests.jsonl`,
      line(sampleRequest(2, 2)) + line({ time: 3 }) + '{"cut sh',
    );
    await Deno.writeTextFile(`${dir}/pods.jsonl`, line(pod(1)));
    const b = openSqliteAudit(`${dir}/audit.db`, keepAll);
    assert.deepEqual((await b.query("requests", {}) as RequestRow[]).map((r) => r.path), [
      "/r2",
      "/r1",
    ]);
    assert.deepEqual(await b.query("pods", {}), [pod(1)]);
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
