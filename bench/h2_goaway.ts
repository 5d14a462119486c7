/**
 * How often an idle etcd client dies when etcd stops: the roles' etcd and
 * gRPC clients ride on the runtime's `node:http2`, and Deno 2.9.6 can abort
 * inside nghttp2 when an idle client session receives a GOAWAY
 * (denoland/deno#36788), which etcd sends when it stops gracefully. Each
 * trial is a process of its own: it opens the project's etcd store, makes 13
 * calls, idles `idleMs` with forced collections, then etcd is stopped
 * (SIGTERM, graceful: GOAWAY; or SIGKILL: none) and started again, and the
 * client must read its keys back. Prints how many trials of each kind the
 * client survived (exit 0) and the exit codes of the others (134: the
 * assertion's abort, 139: a segmentation fault) (docs/status.md).
 *
 * Run: `deno run -A bench/h2_goaway.ts [trials] [idleMs]` (10, 4000). Needs
 * Debian's `etcd-server`.
 */
import { openEtcdStore } from "../src/store/etcd.ts";
import { startEtcd } from "../src/store/etcd_server.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

if (Deno.args[0] === "--trial") {
  const [, signal, idle] = Deno.args;
  const etcd = await startEtcd();
  const store = await openEtcdStore(etcd.url, { timeoutMs: 1000 });
  for (let i = 0; i < 13; i++) await store.create(`/h2/${i}`, "x");
  const gc = (globalThis as { gc?: () => void }).gc;
  for (const t0 = Date.now(); Date.now() - t0 < Number(idle);) {
    gc?.();
    await sleep(200);
  }
  await etcd.down(signal as Deno.Signal);
  await sleep(500);
  await etcd.up();
  let read = -1;
  for (let i = 0; i < 50 && read < 0; i++) {
    read = await store.list("/h2/").then((r) => r.items.length, () => -1);
    if (read < 0) await sleep(200);
  }
  await store.close();
  await etcd.stop();
  Deno.exit(read === 13 ? 0 : 1);
}

const trials = Number(Deno.args[0] ?? 10);
const idleMs = Number(Deno.args[1] ?? 4000);
console.log(`${trials} trials per stop signal, the client idle ${idleMs} ms before etcd stops`);
for (const signal of ["SIGTERM", "SIGKILL"]) {
  const codes: number[] = [];
  for (let i = 0; i < trials; i++) {
    const { code } = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--v8-flags=--expose-gc",
        import.meta.filename!,
        "--trial",
        signal,
        String(idleMs),
      ],
      stdout: "null",
      stderr: "null",
    }).output();
    codes.push(code);
  }
  const died = codes.filter((c) => c !== 0);
  console.log(
    `etcd stopped by ${signal}: the client survived ${trials - died.length} of ${trials}` +
      (died.length ? ` (exit codes ${died.join(", ")})` : ""),
  );
}
