import assert from "node:assert/strict";
import { withTempDir } from "../common/testing.ts";
import { BatchingAuditLog } from "./batching.ts";
import { SqliteAuditBackend } from "./sqlite.ts";
import { openWorkerAudit, WorkerAuditBackend } from "./sqlite_worker.ts";
import { sampleRequest } from "./testing.ts";
import type { RequestRow } from "./types.ts";

Deno.test("WorkerAuditBackend writes and answers queries from its worker", async () => {
  await withTempDir("ixaudit-", async (dir) => {
    const log = new BatchingAuditLog(openWorkerAudit(`${dir}/audit.db`), { flushMs: 10_000 });
    const now = Date.now();
    for (let i = 0; i < 1500; i++) log.request(sampleRequest(i, now + i));
    await log.flush();
    const rows = await log.query("requests", { tenant: "t", func: "f", limit: 2 });
    assert.deepEqual(rows.map((r) => r.path), ["/r1499", "/r1498"]);
    // Its thread's young generation, for the process's memory series: at least V8's least.
    const young = log.stats().youngGenerationBytes;
    assert.ok(young !== undefined && young >= 256 * 1024, `young ${young}`);
    await log.close();
    // Closed, the file is free for another.
    const again = new SqliteAuditBackend(`${dir}/audit.db`);
    assert.equal((await again.query("requests", { limit: 10_000 })).length, 1500);
    await again.close();
  });
});

Deno.test("two processes' audits share one file: each writes, each reads the other's rows", async () => {
  await withTempDir("ixaudit-", async (dir) => {
    // A gateway group (GATEWAY_WORKERS) opens one data directory's audit from several processes.
    const a = new WorkerAuditBackend(`${dir}/audit.db`);
    const b = new WorkerAuditBackend(`${dir}/audit.db`);
    const now = Date.now();
    await a.write({ id: "a1", requests: [sampleRequest(1, now)], pods: [] });
    await b.write({ id: "b1", requests: [sampleRequest(2, now + 1)], pods: [] });
    for (const x of [a, b]) {
      assert.deepEqual((await x.query("requests", {})).map((r) => (r as { path: string }).path), [
        "/r2",
        "/r1",
      ]);
    }
    await a.close();
    await b.close();
  });
});

Deno.test("rows packed for the worker come back whole, absent fields absent", async () => {
  await withTempDir("ixaudit-", async (dir) => {
    const w = new WorkerAuditBackend(`${dir}/audit.db`);
    const now = Date.now();
    const full: RequestRow = {
      ...sampleRequest(1, now),
      ttfbMs: 1.5,
      pod: "t/ns/f/1/abc",
      version: 3,
      error: "timeout",
      call: "call-1",
      attempt: 2,
      ttftMs: 1.75,
      itlP50Ms: 0.5,
      itlP99Ms: 0.875,
      tokensPerS: 812.5,
      promptTokens: 11,
      completionTokens: 4,
      coldStart: true,
      resumed: true,
    };
    const bare: RequestRow = {
      time: now + 1,
      gateway: "gw-2",
      principal: "anonymous",
      tenant: "t",
      namespace: "ns",
      func: "g",
      method: "GET",
      path: "/",
      status: 404,
      latencyMs: 0.25,
      coldStart: false,
      resumed: false,
    };
    await w.write({ id: "x", requests: [full, bare], pods: [] });
    assert.deepEqual(await w.query("requests", {}), [bare, full]);
    await w.close();
  });
});
