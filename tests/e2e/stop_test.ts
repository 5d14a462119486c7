/**
 * Stopping `All` while calls are under way: they get `GATEWAY_DRAIN_S` to
 * finish (they had 2 s), in every process of a gateway group too, whether the
 * leader alone is stopped (an orchestrator's SIGTERM) or the whole group is
 * (a terminal's Ctrl-C); a second signal stops the process at once.
 */
import assert from "node:assert/strict";
import { createNamespace, type Platform, putObject, startPlatform } from "./helpers.ts";

/**
 * A worker that answers `/x/{ms}` after `ms`, its probe at once, and
 * ignores SIGTERM (its stop takes the pod's grace).
 */
const MARK = "ix-stop-test-worker";
const SLOW = `// ${MARK}
Deno.addSignalListener("SIGTERM", () => {});
Deno.serve({ port: Number(Deno.env.get("PORT")), hostname: Deno.env.get("HOST"), onListen() {} },
  async (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/health") return new Response("ok");
    await new Promise((r) => setTimeout(r, Number(path.split("/").pop()) || 0));
    return new Response("done");
  });`;

/** Registers function t/n/slow (`replicas` workers taking `parallel` calls each). */
async function slowFunction(p: Platform, replicas: number, parallel: number): Promise<void> {
  await createNamespace(p.url, "t", "n");
  const created = await putObject(p.url, {
    type: "function",
    tenant: "t",
    namespace: "n",
    name: "slow",
    object: {
      spec: {
        image: "x",
        commands: ["deno", "eval", SLOW],
        endpoint: { port: 8000, probe: "/health" },
        resources: { CPU: 100, Mem: 128 },
        policy: {
          Obj: { max_replica: replicas, parallel, scalein_timeout: 600, standby_per_node: 0 },
        },
      },
    },
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
}

/** A call taking `ms` on the worker, on a connection of its own: its status and body, or its error. */
async function call(p: Platform, ms: number): Promise<string> {
  const client = Deno.createHttpClient({});
  try {
    const r = await fetch(`${p.url}/funccall/t/n/slow/x/${ms}`, { client });
    return `${r.status} ${await r.text()}`;
  } catch (err) {
    return `failed: ${err}`;
  } finally {
    client.close();
  }
}

/** Waits until both processes of a group of two answer on the port (each names itself in /health). */
async function bothServe(p: Platform): Promise<void> {
  const seen = new Set<string>();
  for (const deadline = Date.now() + 20_000; seen.size < 2;) {
    assert.ok(Date.now() < deadline, `only ${[...seen]} answered`);
    const client = Deno.createHttpClient({});
    try {
      seen.add((await (await fetch(`${p.url}/health`, { client })).json()).gateway);
    } finally {
      client.close();
    }
  }
}

/** Ends what a stop cut short left running (the next start on its data directory would). */
async function cleanUp(p: Platform): Promise<void> {
  await p.stop();
  await p.sweep(); // what a second signal left
  await new Deno.Command("pkill", { args: ["-KILL", "-f", MARK] }).output();
  await Deno.remove(p.dataDir, { recursive: true });
}

Deno.test({
  name:
    "a stopped All lets a 3 s call finish, and a second SIGTERM ends it at once (143), not after the workers' grace",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const p = await startPlatform({ INFERX_POD_NETNS: "off", GATEWAY_DRAIN_S: "10" });
    try {
      await slowFunction(p, 1, 1);
      assert.equal(await call(p, 3000), "200 done", "warm");
      const underWay = call(p, 3000);
      await new Promise((r) => setTimeout(r, 300));
      p.proc.kill("SIGTERM");
      assert.equal(await underWay, "200 done", "finished within the drain");
      // The stop now waits for the worker, which ignores SIGTERM (5 s grace): a second one ends it.
      await new Promise((r) => setTimeout(r, 300));
      const t0 = performance.now();
      p.proc.kill("SIGTERM");
      const status = await p.proc.status;
      assert.equal(status.code, 143, p.output());
      assert.ok(performance.now() - t0 < 2000, `at once (${performance.now() - t0} ms)`);
      assert.match(
        p.output(),
        /Stopping \(SIGTERM\): calls under way get 10 s \(GATEWAY_DRAIN_S\)/,
      );
      assert.match(p.output(), /A second signal \(SIGTERM\): stopping at once/);
    } finally {
      await cleanUp(p);
    }
  },
});

Deno.test({
  name:
    "a Ctrl-C to `deno task start` in a terminal (its process group: deno task passes it on) drains calls under way",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const p = await startPlatform(
      { INFERX_POD_NETNS: "off", GATEWAY_DRAIN_S: "10" },
      undefined,
      { ownGroup: true, task: true },
    );
    try {
      await slowFunction(p, 1, 1);
      assert.equal(await call(p, 0), "200 done", "warm");
      const underWay = call(p, 2000);
      await new Promise((r) => setTimeout(r, 300));
      Deno.kill(-p.proc.pid, "SIGINT");
      assert.equal(await underWay, "200 done", p.output());
      assert.doesNotMatch(p.output(), /A second signal/);
      assert.match(p.output(), /Stopping \(SIGINT\): calls under way get 10 s/);
      // A Ctrl-C again, past the second: at once.
      await new Promise((r) => setTimeout(r, 1200));
      if (!(await Promise.race([p.proc.status.then(() => true), Promise.resolve(false)]))) {
        Deno.kill(-p.proc.pid, "SIGINT");
      }
      assert.notEqual(
        (await p.proc.status).code,
        0,
        "stopped at once, not after the workers' grace",
      );
    } finally {
      await cleanUp(p);
    }
  },
});

/**
 * A group of two gateway processes draining `drainS`, with t/n/slow's two workers (8 calls
 * each) warm, both processes serving; its calls on connections of their own spread over both.
 */
async function warmGroup(drainS: number): Promise<Platform> {
  const p = await startPlatform(
    { INFERX_POD_NETNS: "off", GATEWAY_DRAIN_S: String(drainS), GATEWAY_WORKERS: "2" },
    undefined,
    { ownGroup: true },
  );
  try {
    await slowFunction(p, 2, 8);
    await bothServe(p);
    const warm = await Promise.all(Array.from({ length: 8 }, () => call(p, 0)));
    assert.deepEqual(warm, Array(8).fill("200 done"));
    return p;
  } catch (err) {
    await cleanUp(p);
    throw err;
  }
}

for (
  const [how, stop] of [
    ["its leader alone gets SIGTERM", (p: Platform) => p.proc.kill("SIGTERM")],
    ["the whole group gets Ctrl-C (SIGINT)", (p: Platform) => Deno.kill(-p.proc.pid, "SIGINT")],
  ] as const
) {
  Deno.test({
    name:
      `a gateway group lets every call under way finish within its drain, its members' too, when ${how}`,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const p = await warmGroup(10);
      try {
        // Past the 5 s after which a member used to be killed.
        const underWay = Promise.all(Array.from({ length: 8 }, () => call(p, 6000)));
        await new Promise((r) => setTimeout(r, 500));
        stop(p);
        assert.deepEqual(await underWay, Array(8).fill("200 done"), p.output());
      } finally {
        await cleanUp(p);
      }
    },
  });
}

Deno.test({
  name:
    "a gateway group's processes all drain from the leader's SIGTERM: no call outlasts one drain",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const p = await warmGroup(3);
    try {
      // Longer than any drain: each is cut at its process's drain's end.
      let stoppedAt = 0;
      const ended = Promise.all(
        Array.from({ length: 8 }, () => call(p, 30_000).then(() => performance.now() - stoppedAt)),
      );
      await new Promise((r) => setTimeout(r, 500));
      stoppedAt = performance.now();
      p.proc.kill("SIGTERM");
      const after = await ended;
      // Before, the leader drained only once its members had: its calls ran two drains.
      const longest = Math.max(...after);
      assert.ok(longest < 5500, `a call ended ${Math.round(longest)} ms after the SIGTERM`);
    } finally {
      await cleanUp(p);
    }
  },
});

Deno.test({
  name: "a SIGTERM while All starts waits for the start, then stops what it started (exit 0)",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "inferx-e2e-" });
    const proc = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL("../../main.ts", import.meta.url).pathname],
      env: {
        INFERX_DATA_DIR: dir,
        INFERX_SAMPLES: "none",
        INFERX_RUNTIME: "process",
        INFERX_POD_NETNS: "off",
        GATEWAY_PORT: "0",
        NODEAGENT_PORT: "0",
      },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let out = "";
    let signalled = false;
    const pump = async (s: ReadableStream<Uint8Array>) => {
      for await (const t of s.pipeThrough(new TextDecoderStream())) {
        out += t;
        // Its first line: the store is open, the node agent and the gateway still to start.
        if (!signalled && out.includes("State service on")) {
          signalled = true;
          proc.kill("SIGTERM");
        }
      }
    };
    try {
      await Promise.all([pump(proc.stdout), pump(proc.stderr)]);
      const status = await proc.status;
      // Before, the signal's default action ended it (143), what had started left running.
      assert.equal(status.code, 0, out);
      assert.match(out, /Stopping \(SIGTERM\)/);
      assert.match(out, /Gateway gw-[0-9a-f]+ on http:/, "the start went on to its end");
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
