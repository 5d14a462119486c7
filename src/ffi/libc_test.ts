import assert from "node:assert/strict";

Deno.test("reapIfOrphanedToUs() says how an orphan handed to a subreaper ended", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("./testdata/reap_orphans.ts", import.meta.url).pathname],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.ok(out.success, `${text}${new TextDecoder().decode(out.stderr)}`);
  assert.deepEqual(JSON.parse(text.trim().split("\n").at(-1)!), {
    killed: "killed by SIGKILL",
    exited: "exit code 7",
    again: null, // reaped once
  });
});
