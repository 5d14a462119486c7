/**
 * Embedded store commit throughput: creates and compare-and-swap updates,
 * one durable commit each, through the SQLite `MetaStore` on disk, made one
 * at a time and then 32 at a time (writes made together share a sync of
 * the store's log). Baseline in the same run: what the store before it did
 * per write, one JSON line appended to a log file and `fdatasync`ed.
 *
 * Run: `deno run -A bench/store.ts [writes]` (default 2000).
 */
import { openSqliteStore } from "../src/store/sqlite.ts";

const writes = Number(Deno.args[0] ?? 2000);
const dir = await Deno.makeTempDir({ prefix: "inferx-bench-store-" });
const value = JSON.stringify({ spec: { image: "inferx/ngram", resources: { CPU: 300 } } });

async function baseline(): Promise<number> {
  const log = await Deno.open(`${dir}/wal.log`, { create: true, write: true, append: true });
  const enc = new TextEncoder();
  const t0 = performance.now();
  for (let i = 0; i < writes; i++) {
    const line = { op: "put", key: `/registry/function/t/n/f${i % 100}`, value, rev: i + 1 };
    log.writeSync(enc.encode(JSON.stringify(line) + "\n"));
    log.syncDataSync();
  }
  const ms = performance.now() - t0;
  log.close();
  return ms;
}

/** The writes, `together` at a time (each of them on keys of its own). */
async function sqlite(together: number): Promise<number> {
  const store = await openSqliteStore(`${dir}/sqlite-${together}/meta.db`);
  const t0 = performance.now();
  await Promise.all(Array.from({ length: together }, async (_, lane) => {
    const revs = new Map<string, number>();
    for (let i = lane; i < writes; i += together) {
      const key = `/registry/function/t/n/f${lane}-${i % 100}`;
      const rev = revs.get(key);
      revs.set(
        key,
        rev === undefined ? await store.create(key, value) : await store.update(key, value, rev),
      );
    }
  }));
  const ms = performance.now() - t0;
  await store.close();
  return ms;
}

try {
  const base = await baseline();
  const lite = await sqlite(1);
  const together = await sqlite(32);
  const rate = (ms: number) => Math.round(writes / (ms / 1000));
  console.log(`embedded store commits: ${writes} writes (creates, then CAS updates)`);
  console.log(`baseline (JSON line + fdatasync): ${base.toFixed(0)} ms, ${rate(base)} writes/s`);
  console.log(
    `sqlite store, one at a time (WAL, its log synced off the event loop): ${
      lite.toFixed(0)
    } ms, ` +
      `${rate(lite)} writes/s`,
  );
  console.log(
    `sqlite store, 32 at a time (syncs shared): ${together.toFixed(0)} ms, ${
      rate(together)
    } writes/s`,
  );
  console.log(
    `ratio sqlite/baseline throughput: ${(base / lite).toFixed(2)} one at a time, ` +
      `${(base / together).toFixed(2)} 32 at a time`,
  );
} finally {
  await Deno.remove(dir, { recursive: true });
}
