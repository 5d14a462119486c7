import assert from "node:assert/strict";
import { serveGateway } from "../gateway/server.ts";
import { fakeWorker, gatewayFixture } from "../gateway/testing.ts";
import { runCtl } from "./mod.ts";
import { freePort } from "../common/net.ts";

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
  assert.match(first.err, /accepted; see: deno task ctl calls get t:n:c/);
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
  assert.match(again.err, /409 Cannot cancel call .*: it has already ended \(succeeded\)/);
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

t("ctl refuses what a command does not take, and answers that are not the gateway's", async () => {
  // Options and arguments a command does not take: refused, nothing sent.
  const dry = await ctl(
    "--gateway",
    "http://127.0.0.1:9",
    "delete",
    "function",
    "t/n/f",
    "--dry-run",
  );
  assert.equal(dry.code, 1);
  assert.match(dry.err, /delete does not take --dry-run/);
  const extra = await ctl(
    "--gateway",
    "http://127.0.0.1:9",
    "delete",
    "function",
    "t/n/f",
    "t/n/g",
  );
  assert.match(extra.err, /delete: unexpected argument "t\/n\/g"/);
  const gw = ["--gateway", "http://127.0.0.1:9"];
  const badVersion = await ctl(...gw, "rollout", "promote", "t/n/f", "--version", "2.5");
  assert.match(badVersion.err, /--version "2\.5": the newest version you saw/);
  const hugeVersion = await ctl(...gw, "rollout", "promote", "t/n/f", "--version", "9".repeat(17));
  assert.match(hugeVersion.err, /a whole number from 1 to 9007199254740991/);
  const statusVersion = await ctl(...gw, "rollout", "status", "t/n/f", "--version", "2");
  assert.match(statusVersion.err, /rollout status does not take --version/);
  // Each subcommand takes its own: a second key to revoke would be left as it is, unsaid.
  for (
    const [args, said] of [
      [["apikey", "revoke", "k1", "k2"], /apikey revoke: unexpected argument "k2"/],
      [["apikey", "list", "--name", "x"], /apikey list does not take --name/],
      [["apikey", "revoke", "k1", "--expires", "5"], /apikey revoke does not take --expires/],
      [["calls", "list", "extra"], /calls list: unexpected argument "extra"/],
      [["calls", "list", "--rotate"], /calls list does not take --rotate/],
      [["calls", "get", "c1", "--func", "x"], /calls get does not take --func/],
      [["calls", "secret", "t", "--status", "failed"], /calls secret does not take --status/],
    ] as const
  ) {
    const r = await ctl(...gw, ...args);
    assert.equal(r.code, 1, args.join(" "));
    assert.match(r.err, said);
  }
  // `ctl rollout promote t/n/f --version 2` against a gateway refusing the version with `message`.
  const promoteRefused = async (message: string) => {
    const gateway = Deno.serve(
      { port: 0, hostname: "127.0.0.1", onListen() {} },
      (req) =>
        Response.json({
          error: {
            code: "invalid",
            message,
            details: { field: new URL(req.url).searchParams.has("version") ? "version" : "x" },
          },
        }, { status: 400 }),
    );
    const at = `http://127.0.0.1:${gateway.addr.port}`;
    const { err } = await ctl("--gateway", at, "rollout", "promote", "t/n/f", "--version", "2");
    await gateway.shutdown();
    return err;
  };
  // A gateway of the release before --version refuses the parameter as it refuses any unknown.
  assert.match(
    await promoteRefused(`Invalid rollout: unknown parameter "version" (it takes none)`),
    /unknown parameter "version".*earlier release, which takes no --version/,
  );
  // This release's own refusal of a version (past its range) is not taken for that.
  const range = await promoteRefused(`Invalid version "0": an integer from 1 to 9007199254740991`);
  assert.match(range, /400 Invalid version "0": an integer from 1 to 9007199254740991$/m);
  assert.doesNotMatch(range, /earlier release/);
  // A server that answers every request with a page (a proxy's default): not success.
  const page = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen() {} },
    () =>
      new Response("<html>Welcome to nginx!</html>", { headers: { "content-type": "text/html" } }),
  );
  // One that accepts and never answers.
  const silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  (async () => {
    for await (const c of silent) held.push(c);
  })().catch(() => {});
  try {
    const other = `http://127.0.0.1:${page.addr.port}`;
    for (const args of [["delete", "function", "t/n/f"], ["apikey", "create", "full"]]) {
      const r = await ctl("--gateway", other, ...args);
      assert.equal(r.code, 1, args.join(" "));
      assert.match(
        r.err,
        /Unexpected answer from .*: 200 text\/html, not JSON: is .* an InferX gateway\?/,
      );
    }
    const hung = await ctl(
      "--gateway",
      `http://user:secret@127.0.0.1:${(silent.addr as Deno.NetAddr).port}`,
      "--timeout",
      "0.3",
      "list",
      "function",
      "t/n",
    );
    assert.equal(hung.code, 1);
    assert.match(hung.err, /did not answer within 0.3 s \(--timeout\)/);
    assert.doesNotMatch(hung.err, /secret/, "credentials in the URL are not printed");
    // Past a timer's reach (about 24.8 days) it would fire at once: refused.
    for (const t of ["2147484", "Infinity", "0"]) {
      const r = await ctl("--timeout", t, "list", "function", "t/n");
      assert.equal(r.code, 1, t);
      assert.match(r.err, /--timeout .*: a positive number of seconds, 2147483 at most/);
    }
    const closed = freePort();
    const refused = await ctl("--gateway", `http://127.0.0.1:${closed}`, "list", "function", "t/n");
    // The runtime's reason is told, not only "fetch failed".
    assert.match(refused.err, new RegExp(`gateway at http://127.0.0.1:${closed}: .*refused`, "i"));
  } finally {
    await page.shutdown();
    silent.close();
    for (const c of held) c.close();
  }
});

t("ctl escapes a name's characters in the path: a # or ? is part of the name", async () => {
  const f = await gatewayFixture();
  const server = serveGateway(f.app, f.deps, { port: 0 });
  const gw = `http://127.0.0.1:${server.addr.port}`;
  try {
    const typo = await ctl("--gateway", gw, "delete", "function", "t/n/f#typo");
    assert.equal(typo.code, 1);
    assert.match(typo.err, /DELETE \/object\/function\/t\/n\/f%23typo: 40[04]/);
    assert.equal(
      (await ctl("--gateway", gw, "get", "function", "t/n/f")).code,
      0,
      "f is still there",
    );
  } finally {
    await server.shutdown();
    await f.close();
  }
});

t("ctl takes -l once: two are refused, naming the one selector that joins them", async () => {
  for (const cmd of [["export"], ["apply", "-f", "x.json"], ["diff", "-f", "x.json"]]) {
    const r = await ctl(
      "--gateway",
      `http://127.0.0.1:${freePort()}`,
      ...cmd,
      "-l",
      "team=ml",
      "-l",
      "env=prod",
    );
    assert.notEqual(r.code, 0, cmd.join(" "));
    assert.match(r.err, /-l may be given once: join its terms with commas \(-l team=ml,env=prod\)/);
  }
});
