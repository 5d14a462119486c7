import assert from "node:assert/strict";
import { reset } from "@logtape/logtape";
import {
  type AuditBackend,
  type AuditBatch,
  BatchingAuditLog,
  USAGE_READ_LIMIT,
} from "./batching.ts";
import {
  type AuditKind,
  type AuditQuery,
  type PodRow,
  type RequestRow,
  UNAUTHENTICATED,
} from "./types.ts";
import { sampleRequest } from "./testing.ts";
import { logLines } from "../common/testing.ts";

/** A backend in memory that can be switched off, to test the buffer around it. */
class MemoryBackend implements AuditBackend {
  readonly name = "embedded";
  up = true;
  writes = 0;
  requests: RequestRow[] = [];
  pods: PodRow[] = [];
  batches: AuditBatch[] = [];
  attempts: string[] = [];
  write(batch: AuditBatch): Promise<void> {
    this.attempts.push(batch.id);
    if (!this.up) return Promise.reject(new Error("connection refused"));
    this.writes++;
    this.batches.push(structuredClone(batch));
    this.requests.push(...batch.requests);
    this.pods.push(...batch.pods);
    return Promise.resolve();
  }
  query(kind: AuditKind, _q: AuditQuery) {
    if (!this.up) return Promise.reject(new Error("connection refused"));
    return Promise.resolve(kind === "requests" ? [...this.requests] : [...this.pods]);
  }
  close() {
    return Promise.resolve();
  }
}

const row = (i: number) => sampleRequest(i);

Deno.test("BatchingAuditLog writes rows in batches, not one by one", async () => {
  const b = new MemoryBackend();
  const log = new BatchingAuditLog(b, { flushMs: 10_000, batchSize: 100 });
  for (let i = 0; i < 250; i++) log.request(row(i));
  assert.equal(b.writes, 0, "nothing is written on the caller's path");
  await log.flush();
  assert.equal(b.writes, 3);
  assert.deepEqual(b.requests.map((r) => r.time), Array.from({ length: 250 }, (_, i) => i));
  assert.deepEqual(log.stats(), {
    backend: "embedded",
    buffered: 0,
    written: 250,
    dropped: 0,
    refusedDropped: 0,
    healthy: true,
  });
  await log.close();
});

Deno.test("BatchingAuditLog keeps rows while the backend is down, bounded, and counts what it drops", async () => {
  const b = new MemoryBackend();
  const log = new BatchingAuditLog(b, { flushMs: 20, maxBuffered: 5, maxBackoffMs: 50 });
  b.up = false;
  for (let i = 0; i < 8; i++) log.request(row(i));
  await assert.rejects(log.flush(), /connection refused/);
  assert.deepEqual(log.stats(), {
    backend: "embedded",
    buffered: 5,
    written: 0,
    dropped: 3,
    refusedDropped: 0,
    healthy: false,
  });
  await assert.rejects(log.query("requests"), /Cannot read the audit/);
  b.up = true;
  // The timer retries on its own.
  const deadline = Date.now() + 5000;
  while (log.stats().buffered > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.deepEqual(b.requests.map((r) => r.time), [0, 1, 2, 3, 4], "the oldest rows are kept");
  assert.equal(log.stats().healthy, true);
  assert.equal(log.stats().dropped, 3);
  await log.close();
});

Deno.test("BatchingAuditLog writes what is left on close and takes no rows after", async () => {
  const b = new MemoryBackend();
  const log = new BatchingAuditLog(b, { flushMs: 10_000 });
  log.request(row(1));
  log.pod({
    time: 2,
    pod: "p",
    tenant: "t",
    namespace: "n",
    func: "f",
    node: "n1",
    state: "Ready",
    prevState: "Creating",
  });
  await log.close();
  assert.equal(b.requests.length, 1);
  assert.equal(b.pods.length, 1);
  log.request(row(3));
  assert.equal(log.stats().buffered, 0);
});

Deno.test("BatchingAuditLog retries a failed batch with the same id and rows, also when more rows came", async () => {
  const b = new MemoryBackend();
  const log = new BatchingAuditLog(b, { flushMs: 10_000, batchSize: 3 });
  for (let i = 0; i < 2; i++) log.request(row(i));
  b.up = false;
  await assert.rejects(log.flush());
  for (let i = 2; i < 5; i++) log.request(row(i));
  assert.equal(log.stats().buffered, 5);
  b.up = true;
  await log.flush();
  assert.deepEqual(b.batches.map((x) => x.requests.map((r) => r.time)), [[0, 1], [2, 3, 4]]);
  const [first, second] = b.batches.map((x) => x.id);
  assert.deepEqual(
    b.attempts,
    [first, first, second],
    "the failed batch was tried again as it was",
  );
  assert.notEqual(first, second);
  await log.close();
});

Deno.test("BatchingAuditLog leaves rows that come during a write to the next tick, unless a whole batch waits", async () => {
  /** A backend whose writes end when the test says. */
  class SlowBackend extends MemoryBackend {
    pending: (() => void)[] = [];
    sizes: number[] = [];
    override write(batch: AuditBatch): Promise<void> {
      this.sizes.push(batch.requests.length);
      return new Promise((resolve) => this.pending.push(() => resolve(super.write(batch))));
    }
  }
  const b = new SlowBackend();
  const log = new BatchingAuditLog(b, { flushMs: 20, batchSize: 10 });
  const until = async (ok: () => boolean) => {
    for (let i = 0; i < 500 && !ok(); i++) await new Promise((r) => setTimeout(r, 5));
    assert.ok(ok());
  };
  const settle = async () => {
    for (let i = 0; i < 10; i++) await Promise.resolve();
  };
  for (let i = 0; i < 5; i++) log.request(row(i));
  await until(() => b.sizes.length === 1);
  for (let i = 5; i < 8; i++) log.request(row(i));
  b.pending.shift()!();
  await settle();
  assert.deepEqual(b.sizes, [5], "the three rows that came during the write wait for a tick");
  await until(() => b.sizes.length === 2);
  assert.deepEqual(b.sizes, [5, 3]);
  // A whole batch that came during a write is written right after it.
  for (let i = 8; i < 30; i++) log.request(row(i));
  b.pending.shift()!();
  await settle();
  assert.deepEqual(b.sizes, [5, 3, 10]);
  b.pending.shift()!();
  await settle();
  assert.deepEqual(b.sizes, [5, 3, 10, 10], "then the next whole one; the last two wait");
  b.pending.shift()!();
  await until(() => b.sizes.length === 5);
  b.pending.shift()!();
  await until(() => b.requests.length === 30);
  assert.deepEqual(b.requests.map((r) => r.time), Array.from({ length: 30 }, (_, i) => i));
  await log.close();
});

Deno.test("BatchingAuditLog says when each spell of a full buffer begins, and how many rows it cost", async () => {
  const lines = await logLines();
  const b = new MemoryBackend();
  const log = new BatchingAuditLog(b, { flushMs: 60_000, maxBuffered: 100 });
  try {
    const outage = async (rows: number) => {
      b.up = false;
      for (let i = 0; i < rows; i++) log.request(row(i));
      await log.flush().catch(() => {});
      b.up = true;
      await log.flush();
    };
    await outage(100 + 1500);
    const full = () => lines.filter((l) => l.startsWith("Audit buffer full"));
    const cost = () => lines.filter((l) => l.startsWith("Audit rows dropped"));
    assert.equal(full().length, 2, "the first drop, and the 1,000th after it");
    assert.deepEqual(cost(), ["Audit rows dropped while the buffer was full: 1500"]);
    // A second, shorter spell: before, it logged nothing (the count went on from the first).
    await outage(100 + 400);
    assert.equal(full().length, 3);
    assert.deepEqual(cost().at(-1), "Audit rows dropped while the buffer was full: 400");
    assert.equal(log.stats().dropped, 1900);
  } finally {
    await log.close();
    await reset();
  }
});

Deno.test("BatchingAuditLog's usage read past its limit says so, and from when its figures are", async () => {
  const b = new MemoryBackend();
  // Newest first, as backends answer: one row a millisecond, more than the limit since 0.
  const n = USAGE_READ_LIMIT + 10;
  b.requests = Array.from({ length: n }, (_, i) => ({
    ...sampleRequest(i, n - i),
    completionTokens: 1,
  }));
  b.query = (_kind: AuditKind, q: AuditQuery) =>
    Promise.resolve(b.requests.filter((r) => r.time >= (q.since ?? 0)).slice(0, q.limit));
  const log = new BatchingAuditLog(b, { flushMs: 10_000 });
  const cut = await log.usage({ since: 0 });
  assert.equal(cut.truncated, true);
  assert.equal(cut.since, n - USAGE_READ_LIMIT + 1, "the oldest row read");
  assert.equal(cut.tenants[0].completionTokens, USAGE_READ_LIMIT);
  const whole = await log.usage({ since: n - 100 });
  assert.equal(whole.truncated, undefined);
  assert.equal(whole.since, n - 100);
  await log.close();
});

Deno.test("BatchingAuditLog writes calls refused for their credentials at a bounded rate, and counts the rest", async () => {
  const lines = await logLines();
  const b = new MemoryBackend();
  const log = new BatchingAuditLog(b, { flushMs: 10_000, refusedPerS: 5 });
  try {
    // A flood of 401s, 403s, 404s of no function, quota refusals (a tenant past its call rate)
    // and answers to callers whose credential was not accepted (a token naming a key not
    // published yet: 503), which anyone can send: a burst of 50 is written, no more.
    for (let i = 0; i < 300; i++) {
      const r = { ...row(i), status: [401, 403, 404, 503, 429][i % 5] };
      log.request(r.status === 503 ? { ...r, principal: UNAUTHENTICATED } : r);
    }
    // Other rows are not held back by it, a worker's own 404 and 429 among them.
    for (let i = 0; i < 20; i++) log.request({ ...row(1000 + i), status: 200 });
    for (let i = 0; i < 20; i++) {
      log.request({ ...row(1100 + i), status: i % 2 ? 404 : 429, pod: "p" });
    }
    for (let i = 0; i < 20; i++) log.request({ ...row(1200 + i), status: 503 });
    await log.flush();
    assert.equal(b.requests.filter((r) => r.time < 1000).length, 50);
    assert.equal(b.requests.filter((r) => r.time >= 1200 && r.time < 1300).length, 20);
    assert.equal(b.requests.filter((r) => r.status === 200).length, 20);
    assert.equal(b.requests.filter((r) => r.pod === "p").length, 20);
    assert.equal(log.stats().refusedDropped, 250);
    assert.ok(
      lines.some((l) => /faster than 5 a second: 1 of their audit rows not written/.test(l)),
      lines.join("\n"),
    );
    // The rate refills: a second later, 5 more.
    await new Promise((r) => setTimeout(r, 1000));
    for (let i = 0; i < 10; i++) log.request({ ...row(2000 + i), status: 401 });
    await log.flush();
    const late = b.requests.filter((r) => r.time >= 2000).length;
    assert.ok(late >= 5 && late <= 6, String(late));
  } finally {
    await log.close();
    await reset();
  }
});
