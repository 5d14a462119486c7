/**
 * Embedded store commit throughput: creates and compare-and-swap updates,
 * one durable commit each, through the SQLite `MetaStore` on disk.
 * Baseline in the same run: what the store before it did per write, one
 * JSON line appended to a log file and `fdatasync`ed.
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

async function sqlite(): Promise<number> {
  const store = await openSqliteStore(`${dir}/sqlite/meta.db`);
  const revs = new Map<string, number>();
  const t0 = performance.now();
  for (let i = 0; i < writes; i++) {
    const key = `/registry/function/t/n/f${i % 100}`;
    const rev = revs.get(key);
    revs.set(
      key,
      rev === undefined ? await store.create(key, value) : await store.update(key, value, rev),
    );
  }
  const ms = performance.now() - t0;
  await store.close();
  return ms;
}

try {
  const base = await baseline();
  const lite = await sqlite();
  const rate = (ms: number) => Math.round(writes / (ms / 1000));
  console.log(`embedded store commits: ${writes} writes (100 keys: creates, then CAS updates)`);
  console.log(`baseline (JSON line + fdatasync): ${base.toFixed(0)} ms, ${rate(base)} writes/s`);
  console.log(
    `sqlite store (WAL, synchronous=FULL): ${lite.toFixed(0)} ms, ${rate(lite)} writes/s`,
  );
  console.log(`ratio sqlite/baseline throughput: ${(base / lite).toFixed(2)}`);
} finally {
  await Deno.remove(dir, { recursive: true });
}
