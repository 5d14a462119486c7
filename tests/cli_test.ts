/** `main.ts ctl` against a running platform, as a user types it. */
import assert from "node:assert/strict";
import { NGRAM_COMMANDS } from "../src/samples/ngram/image.ts";
import { startPlatform } from "./helpers.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

async function ctl(gateway: string, ...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "ctl", "--gateway", gateway, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

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
      assert.match(again.stdout, /updated function cli\/ns\/lm/);

      const got = await ctl(p.url, "get", "function", "cli/ns/lm");
      assert.equal(JSON.parse(got.stdout).version, 2, "the second apply updated it");
      const list = await ctl(p.url, "list", "function", "cli/ns");
      assert.match(list.stdout, /^lm\trevision \d+\tversion 2$/m);

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
