/**
 * How often an idle gRPC client dies when its server stops: the roles' etcd
 * and gRPC clients ride on the runtime's `node:http2`, and Deno 2.9.6 can
 * abort inside nghttp2 when an idle client session receives a GOAWAY
 * (denoland/deno#36788), which a server stopping gracefully sends. Two
 * servers: etcd (stopped by SIGTERM, graceful: GOAWAY; or SIGKILL: none),
 * and the platform's own state service (`RUN_SERVICE=StateSvc`, stopped by
 * SIGTERM as an operator or Kubernetes stops it: it sends no GOAWAY since
 * it exits anyway, `exitingProcess()` in `src/rpc/grpc.ts`; and with
 * `--graceful`, a server in a process of its own stopped with `server.stop()`
 * as the role did before: GOAWAY). Each trial is a process of its own: it
 * makes 13 calls, idles `idleMs` with forced collections, then the server is
 * stopped and started again, and the client must read its keys back. Prints
 * how many trials of each kind the client survived (exit 0) and the exit
 * codes of the others (134: the assertion's abort, 139: a segmentation
 * fault) (docs/status.md).
 *
 * Run: `deno run -A bench/h2_goaway.ts [trials] [idleMs] [etcd|statesvc|all]`
 * (10, 4000, all). Needs Debian's `etcd-server` for the etcd trials.
 */
import { openEtcdStore } from "../src/store/etcd.ts";
import { startEtcd } from "../src/store/etcd_server.ts";
import { GrpcMetaClient, serveMeta } from "../src/rpc/meta_grpc.ts";
import { openSqliteStore } from "../src/store/sqlite.ts";
import { StateService } from "../src/statesvc/service.ts";
import { freePort } from "../src/common/net.ts";
import { listening, spawnRole } from "../tests/e2e/helpers.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Idles `ms` with a forced collection every 200 ms. */
async function idle(ms: number) {
  const gc = (globalThis as { gc?: () => void }).gc;
  for (const t0 = Date.now(); Date.now() - t0 < ms;) {
    gc?.();
    await sleep(200);
  }
}

/** A state service that can be stopped and started again on one port and data directory. */
async function stateService(how: string) {
  const dir = await Deno.makeTempDir({ prefix: "inferx-h2-" });
  const port = freePort();
  const env = {
    RUN_SERVICE: "StateSvc",
    STATESVC_PORT: String(port),
    INFERX_DATA_DIR: dir,
    LOG_LEVEL: "error",
  };
  const start = async () => {
    if (how === "graceful") {
      // The role before exitingProcess(): its gRPC server stopped with server.stop().
      const cmd = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", import.meta.filename!, "--serve", String(port), dir],
        stdout: "null",
        stderr: "null",
      }).spawn();
      while (!await listening(port)) await sleep(50);
      return { stop: async () => (cmd.kill("SIGTERM"), await cmd.status) };
    }
    const role = await spawnRole(env, () => listening(port));
    return { stop: async () => (role.proc.kill("SIGTERM"), await role.proc.status) };
  };
  let running = await start();
  return {
    url: `127.0.0.1:${port}`,
    async down() {
      await running.stop();
    },
    async up() {
      running = await start();
    },
    async stop() {
      await running.stop();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

if (Deno.args[0] === "--serve") {
  // A state service whose gRPC server stops gracefully on SIGTERM (GOAWAY), for `--graceful`.
  const store = await openSqliteStore(`${Deno.args[2]}/meta.db`);
  const server = await serveMeta(new StateService(store), `127.0.0.1:${Deno.args[1]}`);
  Deno.addSignalListener("SIGTERM", async () => {
    await server.stop();
    await store.close();
    Deno.exit(0);
  });
} else if (Deno.args[0] === "--trial") {
  const [, target, how, idleMs] = Deno.args;
  let read = -1;
  if (target === "etcd") {
    const etcd = await startEtcd();
    const store = await openEtcdStore(etcd.url, { timeoutMs: 1000 });
    for (let i = 0; i < 13; i++) await store.create(`/h2/${i}`, "x");
    await idle(Number(idleMs));
    await etcd.down(how as Deno.Signal);
    await sleep(500);
    await etcd.up();
    for (let i = 0; i < 50 && read < 0; i++) {
      read = await store.list("/h2/").then((r) => r.items.length, () => -1);
      if (read < 0) await sleep(200);
    }
    await store.close();
    await etcd.stop();
  } else {
    const svc = await stateService(how);
    const meta = new GrpcMetaClient(svc.url, { timeoutMs: 1000 });
    const tenant = { type: "tenant" as const, tenant: "system", namespace: "system" };
    for (let i = 0; i < 13; i++) await meta.create({ ...tenant, name: `t${i}`, object: {} });
    await idle(Number(idleMs));
    await svc.down();
    await sleep(500);
    await svc.up();
    for (let i = 0; i < 50 && read < 0; i++) {
      read = await meta.list("tenant").then((r) => r.items.length, () => -1);
      if (read < 0) await sleep(200);
    }
    meta.close();
    await svc.stop();
  }
  Deno.exit(read === 13 ? 0 : 1);
} else {
  const trials = Number(Deno.args[0] ?? 10);
  const idleMs = Number(Deno.args[1] ?? 4000);
  const which = Deno.args[2] ?? "all";
  const kinds: [string, string, string][] = [];
  if (which !== "statesvc") {
    kinds.push(["etcd", "SIGTERM", "etcd stopped by SIGTERM"]);
    kinds.push(["etcd", "SIGKILL", "etcd stopped by SIGKILL"]);
  }
  if (which !== "etcd") {
    kinds.push(["statesvc", "role", "the state service role stopped by SIGTERM"]);
    kinds.push(["statesvc", "graceful", "a state service stopped by server.stop() (GOAWAY)"]);
  }
  console.log(`${trials} trials each, the client idle ${idleMs} ms before its server stops`);
  for (const [target, how, what] of kinds) {
    const codes: number[] = [];
    for (let i = 0; i < trials; i++) {
      const { code } = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          "--v8-flags=--expose-gc",
          import.meta.filename!,
          "--trial",
          target,
          how,
          String(idleMs),
        ],
        stdout: "null",
        stderr: "null",
      }).output();
      codes.push(code);
    }
    const died = codes.filter((c) => c !== 0);
    console.log(
      `${what}: the client survived ${trials - died.length} of ${trials}` +
        (died.length ? ` (exit codes ${died.join(", ")})` : ""),
    );
  }
}
