/** `main.ts ctl` against a running platform, as a user types it. */
import assert from "node:assert/strict";
import { NGRAM_COMMANDS } from "../../src/samples/ngram/image.ts";
import { ctl as run, startPlatform } from "./helpers.ts";

const ctl = (gateway: string, ...args: string[]) => run(gateway, args);

Deno.test({
  name: "ctl applies YAML, gets, lists, calls with a cold-start report, deletes, and fails clearly",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const p = await startPlatform();
    const dir = await Deno.makeTempDir();
    try {
      const yaml = `
type: tenant
tenant: system
namespace: system
name: cli
object: {}
---
- type: namespace
  tenant: cli
  namespace: system
  name: ns
  object: {}
- type: function
  tenant: cli
  namespace: ns
  name: lm
  object:
    image: inferx/ngram
    commands: ${JSON.stringify(NGRAM_COMMANDS)}
    resources: { CPU: 200, Mem: 128 }
`;
      await Deno.writeTextFile(`${dir}/objs.yaml`, yaml);
      const applied = await ctl(p.url, "apply", "-f", `${dir}/objs.yaml`);
      assert.equal(applied.code, 0, applied.stderr);
      assert.deepEqual(applied.stdout.trim().split("\n"), [
        "created tenant system/system/cli",
        "created namespace cli/system/ns",
        "created function cli/ns/lm",
      ]);
      const again = await ctl(p.url, "apply", "-f", `${dir}/objs.yaml`);
      assert.match(again.stdout, /unchanged function cli\/ns\/lm/);

      const got = await ctl(p.url, "get", "function", "cli/ns/lm");
      assert.equal(JSON.parse(got.stdout).version, 1, "the second apply changed nothing");
      const list = await ctl(p.url, "list", "function", "cli/ns");
      assert.match(list.stdout, /^lm\trevision \d+\tversion 1$/m);

      const called = await ctl(
        p.url,
        "call",
        "cli/ns/lm",
        "-d",
        '{"prompt":"The GPU","max_tokens":5}',
      );
      assert.equal(called.code, 0, called.stderr);
      assert.match(called.stderr, /cold start, first byte after [\d.]+ ms/);
      assert.equal([...JSON.parse(called.stdout).choices[0].text].length, 5);

      const missing = await ctl(p.url, "call", "cli/ns/nope", "-d", "{}");
      assert.equal(missing.code, 1);
      assert.match(missing.stderr, /404 Function cli\/ns\/nope does not exist/);
      const bad = await ctl(p.url, "get", "function", "cli/lm");
      assert.equal(bad.code, 1);
      assert.match(bad.stderr, /Expected TENANT\/NAMESPACE\/NAME/);

      const deleted = await ctl(p.url, "delete", "function", "cli/ns/lm");
      assert.equal(deleted.stdout.trim(), "deleted function cli/ns/lm");
      const gone = await ctl(p.url, "get", "function", "cli/ns/lm");
      assert.equal(gone.code, 1);
      assert.match(gone.stderr, /404/);
      const down = await ctl("http://127.0.0.1:1", "list", "function", "cli/ns");
      assert.equal(down.code, 1);
      assert.match(down.stderr, /Cannot reach the gateway at http:\/\/127\.0\.0\.1:1/);
    } finally {
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "ctl sends --key, manages API keys, and reports 401/403 clearly",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const admin = "cli-admin-key-0123456789";
    const p = await startPlatform({ INFERX_ADMIN_APIKEY: admin });
    const dir = await Deno.makeTempDir();
    try {
      const file = `${dir}/t.json`;
      await Deno.writeTextFile(
        file,
        JSON.stringify([
          { type: "tenant", tenant: "system", namespace: "system", name: "k", object: {} },
          { type: "namespace", tenant: "k", namespace: "system", name: "ns", object: {} },
        ]),
      );
      const anon = await ctl(p.url, "apply", "-f", file);
      assert.equal(anon.code, 1);
      assert.match(anon.stderr, /401 Credentials required/);
      assert.equal((await ctl(p.url, "--key", admin, "apply", "-f", file)).code, 0);
      const made = await ctl(
        p.url,
        "--key",
        admin,
        "apikey",
        "create",
        "read",
        "k/ns",
        "--name",
        "ci",
      );
      assert.equal(made.code, 0, made.stderr);
      const key = made.stdout.trim();
      assert.match(key, /^ixk_/);
      assert.match(made.stderr, /created read key [a-z0-9]+ for k\/ns; it is shown once/);
      const listed = await ctl(p.url, "--key", admin, "apikey", "list");
      const line = listed.stdout.split("\n").find((l) => l.includes("\tci\t"))!;
      assert.match(line, /^[a-z0-9]+\tread\tk\/ns\tci\texpires never$/);
      const id = line.split("\t")[0];
      assert.equal((await ctl(p.url, "--key", key, "list", "function", "k/ns")).code, 0);
      const denied = await ctl(p.url, "--key", key, "list", "function", "k/other");
      assert.equal(denied.code, 1);
      assert.match(denied.stderr, /403 key:[a-z0-9]+ may not read in k\/other/);
      assert.equal(
        (await ctl(p.url, "--key", admin, "apikey", "revoke", id)).stdout.trim(),
        `revoked ${id}`,
      );
      const gone = await ctl(p.url, "--key", key, "list", "function", "k/ns");
      assert.match(gone.stderr, /401 Invalid API key/);
    } finally {
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
      await Deno.remove(dir, { recursive: true });
    }
  },
});
