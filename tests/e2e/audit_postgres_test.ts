/**
 * The audit in a real PostgreSQL started for the test on 127.0.0.1 with a
 * temporary data directory: migrations, request and pod rows from a running
 * platform, and an outage during which calls still succeed and rows wait.
 */
import assert from "node:assert/strict";
import * as net from "node:net";
import postgres from "postgres";
import { BatchingAuditLog, MIGRATIONS, PostgresAuditBackend } from "../../src/audit/mod.ts";
import { MIGRATION_LOCK } from "../../src/audit/postgres.ts";
import type { AuditBatch } from "../../src/audit/batching.ts";
import { pgUnavailable, startPostgres } from "../../src/audit/pg_server.ts";
import { sampleRequest, tokenRows } from "../../src/audit/testing.ts";
import { summarizeUsage } from "../../src/audit/usage.ts";
import {
  createNamespace,
  eventually,
  ngramFunction,
  putObject,
  request,
  startPlatform,
} from "./helpers.ts";

const skip = pgUnavailable();
if (skip) console.log(`Skipping PostgreSQL audit tests: ${skip}`);

const row = (i: number) => sampleRequest(i, Date.now());

Deno.test({
  name:
    "PostgreSQL audit: migrations apply once, also when two gateways start together, and a batch is written once",
  ignore: skip !== undefined,
  async fn() {
    const pg = await startPostgres();
    const a = new PostgresAuditBackend(pg.url);
    const b = new PostgresAuditBackend(pg.url);
    try {
      const [ra, rb] = await Promise.all([a.migrate(), b.migrate()]);
      assert.deepEqual([...ra, ...rb].sort(), MIGRATIONS.map((m) => m.version));
      assert.deepEqual(await a.versions(), MIGRATIONS.map((m) => m.version));
      const c = new PostgresAuditBackend(pg.url);
      assert.deepEqual(await c.migrate(), [], "nothing left to apply");
      await c.close();
      const batch = { id: "audit-1", requests: [row(1)], pods: [] };
      await a.write(batch);
      await b.write(batch); // a retry after an answer lost with the connection
      const got = await b.query("requests", { tenant: "t", func: "f" });
      assert.equal(got.length, 1, "a batch id is written once");
      assert.equal((got[0] as { path: string }).path, "/r1");
      await a.write({ id: "audit-2", requests: [{ ...row(2), status: 503 }], pods: [] });
      const failed = await b.query("requests", { status: { min: 500, max: 599 } });
      assert.deepEqual(failed.map((r) => (r as { path: string }).path), ["/r2"]);
      await a.write({
        id: "audit-3",
        requests: [{ ...row(3), time: 0, call: "t:n:c1", attempt: 2 }],
        pods: [],
      });
      const calls = await b.query("requests", { tenant: "t", func: "f", limit: 10 });
      const attempt = calls.find((r) => (r as { path: string }).path === "/r3") as {
        call?: string;
        attempt?: number;
      };
      assert.deepEqual([attempt.call, attempt.attempt], ["t:n:c1", 2], "an attempt's call, number");
    } finally {
      await a.close();
      await b.close();
      await pg.stop();
    }
  },
});

Deno.test({
  name:
    "PostgreSQL audit: a migration whose connection is cut fails, the process lives on, and the next try applies it",
  ignore: skip !== undefined,
  async fn() {
    // The migrations ran in a client-side transaction: a connection cut inside it (PostgreSQL
    // restarting, an administrator ending the session) made npm:postgres's rollback throw where
    // nothing could catch it, which ended this process.
    const pg = await startPostgres();
    const admin = postgres(pg.url, { max: 1, onnotice: () => {} });
    const b = new PostgresAuditBackend(pg.url);
    try {
      // Hold the migration lock, so the backend's migration waits inside its transaction.
      await admin`select pg_advisory_lock(${MIGRATION_LOCK})`;
      const migrating = b.migrate().then(() => undefined, (err: Error) => err); // caught at once
      let waiting: { pid: number }[] = [];
      await eventually("the migration to wait for the lock", async () => {
        waiting = await admin<{ pid: number }[]>`select pid from pg_stat_activity
          where application_name = 'inferx-audit' and wait_event_type = 'Lock'`;
        return waiting.length === 1;
      });
      await admin`select pg_terminate_backend(${waiting[0].pid})`;
      await admin`select pg_advisory_unlock(${MIGRATION_LOCK})`;
      assert.match(String(await migrating), /CONNECTION_CLOSED|terminat/);
      const [t] = await admin`select to_regclass('inferx_request_audit') as t`;
      assert.equal(t.t, null, "nothing of the cut migration stayed");
      assert.deepEqual(await b.migrate(), MIGRATIONS.map((m) => m.version));
      await b.write({ id: "after-cut", requests: [row(1)], pods: [] });
      assert.equal((await b.query("requests", {})).length, 1);
    } finally {
      await b.close();
      await admin.end();
      await pg.stop();
    }
  },
});

Deno.test({
  name:
    "PostgreSQL audit: batches written while PostgreSQL restarts land once each, and the process lives on",
  ignore: skip !== undefined,
  async fn() {
    // A batch's rows went in a client-side transaction; when PostgreSQL's fast shutdown cut a
    // connection inside one, the library's rollback wrote to a socket already gone and threw
    // where nothing could catch it: this process (a gateway, in production) ended.
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    const pg = await startPostgres();
    const backend = new PostgresAuditBackend(pg.url);
    let on = true;
    let batches = 0;
    let failures = 0;
    try {
      await backend.migrate();
      // Eight writers; a batch that fails is sent again later with its id, as the batching log does.
      const failed: AuditBatch[] = [];
      const writer = async (w: number) => {
        for (let n = 0; on; n++) {
          const batch = {
            id: `restart-${w}-${n}`,
            requests: Array.from({ length: 20 }, (_, i) => row(i)),
            pods: [],
          };
          batches++;
          await backend.write(batch).catch(() => (failures++, failed.push(batch)));
          await sleep(5);
        }
      };
      const load = Promise.all([0, 1, 2, 3, 4, 5, 6, 7].map(writer));
      for (let round = 0; round < 4; round++) {
        await sleep(800);
        await pg.down();
        await sleep(500);
        await pg.up();
      }
      on = false;
      await load;
      for (const batch of failed) {
        await eventually(
          `batch ${batch.id}`,
          () => backend.write(batch).then(() => true, () => false),
        );
      }
      assert.ok(failures > 0, "some writes met the restarts");
      const sql = postgres(pg.url, { max: 1, onnotice: () => {} });
      const [{ n }] = await sql<{ n: number }[]>`
        select count(*)::int as n from inferx_request_audit where path like '/r%'`;
      await sql.end();
      assert.equal(n, batches * 20, `${batches} batches, ${failures} failed tries`);
    } finally {
      on = false;
      await backend.close();
      await pg.stop();
    }
  },
});

Deno.test({
  name:
    "PostgreSQL audit: token figures round-trip, and the database sums usage as the gateway does",
  ignore: skip !== undefined,
  async fn() {
    const pg = await startPostgres();
    const backend = new PostgresAuditBackend(pg.url);
    try {
      const rows = tokenRows();
      await backend.write({ id: "tokens", requests: rows, pods: [] });
      const back = await backend.query("requests", { tenant: "t", func: "f", since: 1000 });
      const r3 = back.find((r) => (r as { path: string }).path === "/r3");
      const undef = {
        ttfbMs: undefined,
        pod: undefined,
        error: undefined,
        call: undefined,
        attempt: undefined,
      };
      assert.deepEqual(r3, { ...undef, itlP50Ms: undefined, itlP99Ms: undefined, ...rows[2] });
      // `until` ends the window (the next page of a list): rows before it only.
      const before = await backend.query("requests", { since: 1000, until: rows[2].time });
      assert.deepEqual(
        before.map((r) => r.time),
        rows.filter((r) => r.time >= 1000 && r.time < rows[2].time).map((r) => r.time)
          .sort((a, b) => b - a),
      );
      for (const q of [{ since: 1000 }, { since: 1000, tenant: "u" }, { since: 1003 }]) {
        const want = summarizeUsage(rows, q);
        delete want.rowsRead;
        assert.deepEqual(await backend.summarize(q), want, JSON.stringify(q));
      }
    } finally {
      await backend.close();
      await pg.stop();
    }
  },
});

Deno.test({
  name: "PostgreSQL audit: a full buffer drops new rows and counts them; the rest are written",
  ignore: skip !== undefined,
  async fn() {
    const pg = await startPostgres();
    const log = new BatchingAuditLog(new PostgresAuditBackend(pg.url), {
      maxBuffered: 4,
      flushMs: 50,
      maxBackoffMs: 200,
    });
    try {
      await pg.down();
      for (let i = 0; i < 6; i++) log.request(row(i));
      await assert.rejects(log.flush());
      assert.equal(log.stats().dropped, 2);
      assert.equal(log.stats().buffered, 4);
      assert.equal(log.stats().healthy, false);
      await pg.up();
      await eventually(
        "the buffered rows to be written",
        () => Promise.resolve(log.stats().buffered === 0),
        20_000,
      );
      const rows = await log.query("requests", {});
      assert.deepEqual(rows.map((r) => r.path).sort(), ["/r0", "/r1", "/r2", "/r3"]);
    } finally {
      await log.close();
      await pg.stop();
    }
  },
});

Deno.test({
  name: "PostgreSQL audit: a platform writes request and pod rows, and rides out an outage",
  ignore: skip !== undefined,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    const p = await startPlatform({ AUDITDB_ADDR: pg.url });
    const sql = postgres(pg.url, { max: 1, onnotice: () => {} });
    try {
      await createNamespace(p.url, "public", "demo");
      const r = await putObject(
        p.url,
        ngramFunction("public", "demo", "lm", { policy: { Obj: { scalein_timeout: 60 } } }),
      );
      assert.equal(r.status, 201, JSON.stringify(r.body));
      const call = () =>
        request(`${p.url}/funccall/public/demo/lm/v1/completions`, {
          body: { prompt: "The GPU", max_tokens: 4 },
        });
      for (let i = 0; i < 3; i++) assert.equal((await call()).status, 200);
      const count = async () => {
        try {
          const [r] =
            await sql`select count(*)::int as n from inferx_request_audit where func = 'lm'`;
          return Number(r.n);
        } catch {
          return -1; // not migrated yet, or reconnecting after the outage
        }
      };
      await eventually("3 request rows", async () => await count() === 3);
      const first = await sql`select * from inferx_request_audit order by time limit 1`;
      assert.equal(first[0].status, 200);
      assert.equal(first[0].cold_start, true);
      assert.equal(first[0].principal, "admin", "auth is off: everyone is the administrator");
      assert.equal(first[0].path, "/funccall/public/demo/lm/v1/completions");
      await eventually("pod rows", async () => {
        const states = await sql`select state, prev_state from inferx_pod_audit where func = 'lm'`;
        return states.some((s) => s.state === "Ready" && s.prev_state === "Creating");
      });

      // PostgreSQL goes away: calls still succeed, rows wait in the gateway.
      await pg.down();
      for (let i = 0; i < 3; i++) assert.equal((await call()).status, 200);
      await eventually("the audit to notice the outage", async () => {
        const s = await request(`${p.url}/audit/stats`);
        return s.body.healthy === false && s.body.buffered >= 3;
      });
      const down = await request(`${p.url}/audit/requests`);
      assert.equal(down.status, 503);
      assert.match(down.body.error.message, /Cannot read the audit \(postgres\)/);
      // Named, not addressed: PostgreSQL's address is the cluster's, not the caller's.
      assert.doesNotMatch(down.body.error.message, /127\.0\.0\.1|:\d{4,5}\b/);
      const metrics = await (await fetch(`${p.url}/metrics`)).text();
      assert.match(metrics, /inferx_audit_healthy 0/);

      await pg.up();
      await eventually("the waiting rows to be written", async () => await count() === 6, 30_000);
      const s = await request(`${p.url}/audit/stats`);
      assert.equal(s.body.dropped, 0);
      const listed = await request(`${p.url}/audit/requests?tenant=public&func=lm&namespace=demo`);
      assert.equal(listed.status, 200);
      assert.equal(listed.body.items.length, 6);
    } finally {
      await sql.end({ timeout: 1 });
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
      await pg.stop();
    }
  },
});

Deno.test({
  name:
    "PostgreSQL audit: a connection reset as a new connection starts fails that write, and the process lives on",
  ignore: skip !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const pg = await startPostgres();
    // A proxy that resets the first connection on its first query after the startup: the
    // library's own array-type lookup, when it makes one (it did on every new connection,
    // and nothing handled its failure: an unhandled rejection ended the gateway).
    let armed = true;
    const server = net.createServer((client) => {
      const up = net.connect(pg.port, "127.0.0.1");
      client.on("error", () => {});
      up.on("error", () => {});
      client.on("data", (d: Uint8Array) => {
        if (armed && (d[0] === 0x51 /* Q */ || d[0] === 0x50) /* P */) {
          armed = false;
          client.resetAndDestroy();
          up.destroy();
          return;
        }
        up.write(d);
      });
      up.on("data", (d: Uint8Array) => client.write(d));
      up.on("close", () => client.destroy());
      client.on("close", () => up.destroy());
    });
    const port = await new Promise<number>((r) =>
      server.listen(0, "127.0.0.1", () => r((server.address() as net.AddressInfo).port))
    );
    const backend = new PostgresAuditBackend(`postgres://inferx@127.0.0.1:${port}/postgres`);
    try {
      const batch = { id: "b1", requests: [sampleRequest(1)], pods: [] };
      await assert.rejects(backend.write(batch), /ECONNRESET|closed|terminated/i);
      await new Promise((r) => setTimeout(r, 300));
      await backend.write(batch); // and the process is still here to write it
      assert.equal(armed, false);
    } finally {
      await backend.close();
      server.close();
      await pg.stop();
    }
  },
});

Deno.test({
  name:
    "PostgreSQL audit: a usage summary's tenant totals are its functions' while rows are written",
  ignore: skip !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const pg = await startPostgres();
    const backend = new PostgresAuditBackend(pg.url);
    let on = true;
    try {
      await backend.migrate();
      const writer = (async () => {
        for (let n = 0; on && n < 300; n++) {
          const requests = Array.from({ length: 50 }, (_, i) => ({
            ...sampleRequest(i, Date.now()),
            ttftMs: 10,
            completionTokens: 3,
            version: 1,
          }));
          await backend.write({ id: `w${n}`, requests, pods: [] });
        }
      })();
      // Before, functions and tenants were two statements: rows written in between were in
      // one and not the other (12 of 30 summaries).
      for (let i = 0; i < 30; i++) {
        const s = await backend.summarize({ since: 0 });
        const calls = (xs: { calls: number }[]) => xs.reduce((a, x) => a + x.calls, 0);
        assert.equal(calls(s.tenants), calls(s.functions), `summary ${i}`);
      }
      on = false;
      await writer;
    } finally {
      on = false;
      await backend.close();
      await pg.stop();
    }
  },
});

Deno.test({
  name:
    "PostgreSQL audit: rows with what PostgreSQL cannot hold are written with it made storable, with every other row",
  ignore: skip !== undefined,
  async fn() {
    const pg = await startPostgres();
    const backend = new PostgresAuditBackend(pg.url);
    const log = new BatchingAuditLog(backend, { flushMs: 20 });
    try {
      // A count past PostgreSQL's integer, a worker's output with a NUL byte, a reason cut
      // inside a character (a lone surrogate): each made the whole batch fail, for ever.
      log.request({ ...row(1), promptTokens: 3_000_000_000, completionTokens: 5 });
      log.pod({
        time: Date.now(),
        pod: "p1",
        tenant: "t",
        namespace: "n",
        func: "f",
        node: "n1",
        state: "Failed",
        reason: "bad\u0000byte and a cut \ud83d",
      });
      for (let i = 2; i <= 20; i++) log.request(row(i));
      await log.flush();
      const requests = await backend.query("requests", { limit: 100 });
      assert.equal(requests.length, 20);
      const big = requests.find((r) => (r as { path: string }).path === "/r1") as {
        promptTokens?: number;
        completionTokens?: number;
      };
      assert.deepEqual([big.promptTokens, big.completionTokens], [undefined, 5]);
      const [pod] = await backend.query("pods", {});
      assert.equal((pod as { reason: string }).reason, "badbyte and a cut \ufffd");
      const stats = log.stats();
      assert.deepEqual([stats.written, stats.dropped, stats.healthy], [21, 0, true]);
    } finally {
      await log.close();
      await pg.stop();
    }
  },
});

Deno.test({
  name:
    "PostgreSQL audit: a write held up by a lock reports the log unhealthy, and a stop does not wait for it for ever",
  ignore: skip !== undefined,
  async fn() {
    const pg = await startPostgres();
    const backend = new PostgresAuditBackend(pg.url);
    await backend.migrate();
    const log = new BatchingAuditLog(backend, { flushMs: 20, closeMs: 1000 });
    const admin = postgres(pg.url, { max: 1, onnotice: () => {} });
    try {
      const locked = admin.begin(async (tx) => {
        await tx`lock table inferx_request_audit in access exclusive mode`;
        await new Promise((r) => setTimeout(r, 12_000));
      });
      await new Promise((r) => setTimeout(r, 200));
      log.request(row(1));
      await new Promise((r) => setTimeout(r, 11_000)); // past the 10 s a write may take
      assert.equal(log.stats().healthy, false);
      const t0 = performance.now();
      await log.close();
      assert.ok(
        performance.now() - t0 < 3000,
        `stopped in ${Math.round(performance.now() - t0)} ms`,
      );
      await locked;
    } finally {
      await admin.end();
      await pg.stop();
    }
  },
});
