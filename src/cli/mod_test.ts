import assert from "node:assert/strict";
import { serveGateway } from "../gateway/server.ts";
import { fakeWorker, gatewayFixture } from "../gateway/testing.ts";
import { runCtl } from "./mod.ts";

const t = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });

async function ctl(...args: string[]) {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runCtl(args, { out: (s) => out.push(s), err: (s) => err.push(s) });
  return { code, out: out.join("\n"), err: err.join("\n") };
}

t("ctl call --async prints the id; ctl calls get, list and cancel follow it", async () => {
  const f = await gatewayFixture({
    calls: { backoffMs: 20 },
    policy: { parallel: 1, max_replica: 1 },
  });
  const server = serveGateway(f.app, f.deps, { port: 0 });
  const gw = `http://127.0.0.1:${server.addr.port}`;
  const w = fakeWorker("w", { delayMs: 300 });
  f.sched.endpoints.push(w.endpoint);
  const first = await ctl("--gateway", gw, "call", "t/n/f", "-d", '{"prompt":"x"}', "--async");
  assert.equal(first.code, 0, first.err);
  assert.match(first.out, /^t:n:c[0-9a-f]{24}$/);
  assert.match(first.err, /accepted; see: inferx ctl calls get t:n:c/);
  const second = await ctl("--gateway", gw, "call", "t/n/f", "--async");
  assert.equal(second.code, 0, second.err);

  const cancelled = await ctl("--gateway", gw, "calls", "cancel", second.out);
  assert.equal(cancelled.out, `cancelled ${second.out}`);
  let got: { status: string; result?: { body: { worker: string } } } = { status: "" };
  for (let i = 0; i < 100 && got.status !== "succeeded"; i++) {
    await new Promise((r) => setTimeout(r, 20));
    got = JSON.parse((await ctl("--gateway", gw, "calls", "get", first.out)).out);
  }
  assert.equal(got.status, "succeeded");
  assert.equal(got.result?.body.worker, "w");
  const list = await ctl("--gateway", gw, "calls", "list", "--func", "t/n/f");
  const lines = list.out.split("\n");
  assert.equal(lines.length, 2);
  assert.match(
    lines.find((l) => l.startsWith(first.out))!,
    /\tsucceeded\tt\/n\/f\t.*\tattempts 1\tstatus 200$/,
  );
  assert.match(lines.find((l) => l.startsWith(second.out))!, /\tcancelled\t/);
  const only = await ctl("--gateway", gw, "calls", "list", "--status", "cancelled");
  assert.equal(only.out.split("\n").length, 1);

  const again = await ctl("--gateway", gw, "calls", "cancel", first.out);
  assert.equal(again.code, 1);
  assert.match(again.err, /409 Cannot cancel call .*: it has already succeeded/);
  const bad = await ctl("--gateway", gw, "calls", "get", "nope");
  assert.match(bad.err, /400 Invalid call id "nope"/);
  const secret = await ctl("--gateway", gw, "calls", "secret", "t");
  assert.match(secret.out, /^[0-9a-f]{64}$/);
  const rotated = await ctl("--gateway", gw, "calls", "secret", "t", "--rotate");
  assert.notEqual(rotated.out, secret.out);
  const lonely = await ctl("--gateway", gw, "call", "t/n/f", "--callback", "http://x");
  assert.match(lonely.err, /--callback needs --async/);
  await server.shutdown(500);
  await f.close();
  await w.close();
});

t(
  "ctl diff's usage errors exit 2 (1 says there are differences); other commands' exit 1",
  async () => {
    for (const args of [["diff"], ["diff", "-f"], ["diff", "-f", "x.yaml", "--bogus"]]) {
      assert.equal((await ctl(...args)).code, 2, args.join(" "));
    }
    for (const args of [["apply"], ["get", "function"], ["apply", "-f", "x", "--bogus"]]) {
      assert.equal((await ctl(...args)).code, 1, args.join(" "));
    }
  },
);

t("ctl apikey create refuses a reach that is not TENANT or TENANT/NAMESPACE", async () => {
  for (const where of ["a/b/c", "a/", "/b"]) {
    const r = await ctl("--gateway", "http://127.0.0.1:1", "apikey", "create", "full", where);
    assert.equal(r.code, 1, where);
    assert.match(r.err, /Expected TENANT or TENANT\/NAMESPACE/, where);
  }
});
