import assert from "node:assert/strict";
import { withTempDir } from "../common/testing.ts";
import { BatchingAuditLog } from "./batching.ts";
import { SqliteAuditBackend } from "./sqlite.ts";
import { openWorkerAudit, WorkerAuditBackend } from "./sqlite_worker.ts";
import { sampleRequest } from "./testing.ts";

Deno.test("WorkerAuditBackend writes and answers queries from its worker", async () => {
  await withTempDir("ixaudit-", async (dir) => {
    const log = new BatchingAuditLog(openWorkerAudit(`${dir}/audit.db`), { flushMs: 10_000 });
    const now = Date.now();
    for (let i = 0; i < 1500; i++) log.request(sampleRequest(i, now + i));
    await log.flush();
    const rows = await log.query("requests", { tenant: "t", func: "f", limit: 2 });
    assert.deepEqual(rows.map((r) => r.path), ["/r1499", "/r1498"]);
    await log.close();
    // Closed, the file is free for another.
    const again = new SqliteAuditBackend(`${dir}/audit.db`);
    assert.equal((await again.query("requests", { limit: 10_000 })).length, 1500);
    await again.close();
  });
});

Deno.test("openWorkerAudit fails at start when the file is held by another", async () => {
  await withTempDir("ixaudit-", async (dir) => {
    const holder = new SqliteAuditBackend(`${dir}/audit.db`);
    assert.throws(
      () => openWorkerAudit(`${dir}/audit.db`),
      /Cannot open the audit at .*audit\.db: another process has it open/,
    );
    await holder.close();
  });
});

Deno.test("WorkerAuditBackend opens its database once it can, when it could not at first", async () => {
  await withTempDir("ixaudit-", async (dir) => {
    const holder = new SqliteAuditBackend(`${dir}/audit.db`);
    const b = new WorkerAuditBackend(`${dir}/audit.db`);
    const batch = { id: "b1", requests: [sampleRequest(1, Date.now())], pods: [] };
    await assert.rejects(b.write(batch), /another process has it open/);
    await holder.close();
    await b.write(batch);
    assert.equal((await b.query("requests", {})).length, 1);
    await b.close();
  });
});
