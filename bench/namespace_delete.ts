/**
 * What deleting a namespace's asynchronous calls costs the store: the keys
 * deleted one `delete` at a time, as the state service did, against
 * `deleteKeys`, in the same run. On the embedded store (a file on disk, each
 * commit synced) `deleteKeys` is a transaction per chunk, the event loop let
 * go between chunks; on etcd (`--etcd`: a throwaway etcd is started) a
 * delete request per key, several in flight. Prints the time each takes and
 * the longest stretch it held the event loop, measured by a timer that should
 * fire every millisecond.
 *
 * Run: `deno run -A bench/namespace_delete.ts [calls] [--etcd]` (20000).
 */
import { nextTurn } from "../src/common/clock.ts";
import { measure } from "./loop_stall.ts";
import { openEtcdStore } from "../src/store/etcd.ts";
import { type EtcdServer, startEtcd } from "../src/store/etcd_server.ts";
import { openSqliteStore } from "../src/store/sqlite.ts";
import type { MetaStore } from "../src/store/types.ts";

const args = Deno.args.filter((a) => a !== "--etcd");
const onEtcd = args.length < Deno.args.length;
const n = Number(args[0] ?? 20_000);
const dir = await Deno.makeTempDir({ prefix: "inferx-bench-nsdel-" });
const etcd: EtcdServer | undefined = onEtcd ? await startEtcd() : undefined;
const store = etcd ? await openEtcdStore(etcd.url) : await openSqliteStore(`${dir}/meta.db`);

/** Puts `n` call records under `prefix` (the value of a small one). */
async function fill(s: MetaStore, prefix: string): Promise<string[]> {
  const keys = Array.from({ length: n }, (_, i) => `${prefix}${String(i).padStart(6, "0")}`);
  const value = JSON.stringify({ status: "queued", body: "x".repeat(200) });
  for (const [i, k] of keys.entries()) {
    await s.create(k, value);
    if (i % 500 === 0) await nextTurn();
  }
  return keys;
}

try {
  const oneByOne = await fill(store, "/registry/call/t/a/");
  const before = await measure(async () => {
    for (const k of oneByOne) await store.delete(k);
  });
  const chunked = await fill(store, "/registry/call/t/b/");
  const after = await measure(() => store.deleteKeys(chunked));
  const row = (what: string, r: { ms: number; stallMs: number }) =>
    `| ${what} | ${Math.round(r.ms)} | ${Math.round(r.stallMs)} |`;
  console.log(
    `deleting ${n} call records from ${
      etcd ? "etcd" : "the embedded store (a file, synced commits)"
    }`,
  );
  console.log("| how | ms in all | longest event-loop stall, ms |");
  console.log("| --- | ---: | ---: |");
  console.log(row("one delete() each (before)", before));
  console.log(row("deleteKeys()", after));
  console.log(
    `deleteKeys against one by one: ${(after.ms / before.ms).toFixed(3)}x the time, ` +
      `${(after.stallMs / before.stallMs).toFixed(4)}x the longest stall`,
  );
} finally {
  await store.close();
  await etcd?.stop();
  await Deno.remove(dir, { recursive: true });
}
