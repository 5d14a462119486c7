/**
 * Stopping `All` while a call is under way: the call gets `GATEWAY_DRAIN_S`
 * to finish (it had 2 s), and a second SIGTERM stops the process at once.
 */
import assert from "node:assert/strict";
import { createNamespace, putObject, startPlatform } from "./helpers.ts";

/** A worker that answers after 3 s, its probe at once, and ignores SIGTERM (its stop takes the grace). */
const MARK = "ix-stop-test-worker";
const SLOW = `// ${MARK}
Deno.addSignalListener("SIGTERM", () => {});
Deno.serve({ port: Number(Deno.env.get("PORT")), hostname: Deno.env.get("HOST"), onListen() {} },
  async (req) => {
    if (new URL(req.url).pathname === "/health") return new Response("ok");
    await new Promise((r) => setTimeout(r, 3000));
    return new Response("done");
  });`;

Deno.test({
  name:
    "a stopped All lets a 3 s call finish, and a second SIGTERM ends it at once (143), not after the workers' grace",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const p = await startPlatform({ INFERX_POD_NETNS: "off", GATEWAY_DRAIN_S: "10" });
    try {
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
            policy: { Obj: { max_replica: 1, scalein_timeout: 600, standby_per_node: 0 } },
          },
        },
      });
      assert.equal(created.status, 201, JSON.stringify(created.body));
      const call = () =>
        fetch(`${p.url}/funccall/t/n/slow/x`).then(async (r) => [r.status, await r.text()]);
      assert.deepEqual(await call(), [200, "done"], "warm");
      const underWay = call();
      await new Promise((r) => setTimeout(r, 300));
      p.proc.kill("SIGTERM");
      assert.deepEqual(await underWay, [200, "done"], "finished within the drain");
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
      assert.match(p.output(), /SIGTERM again: stopping at once/);
    } finally {
      await p.stop();
      // What the cut stop left running (the next start would end it).
      await new Deno.Command("pkill", { args: ["-KILL", "-f", MARK] }).output();
      await Deno.remove(p.dataDir, { recursive: true });
    }
  },
});
