import assert from "node:assert/strict";
import { punchHole } from "./libc.ts";

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

Deno.test("punchHole() gives back a file's blocks read, its size and the rest kept", async () => {
  const path = await Deno.makeTempFile();
  try {
    const data = new Uint8Array(1024 * 1024).map((_, i) => 1 + i % 251);
    await Deno.writeFile(path, data);
    const before = await Deno.stat(path);
    assert.ok(await punchHole(path, 0, 512 * 1024));
    const after = await Deno.stat(path);
    assert.equal(after.size, before.size);
    assert.ok(after.blocks! * 512 <= before.blocks! * 512 - 512 * 1024, `${after.blocks} blocks`);
    const read = await Deno.readFile(path);
    assert.ok(read.subarray(0, 512 * 1024).every((b) => b === 0));
    assert.deepEqual(read.subarray(512 * 1024), data.subarray(512 * 1024));
    // Appending goes on at the end.
    await Deno.writeFile(path, new Uint8Array([7]), { append: true });
    assert.equal((await Deno.stat(path)).size, before.size + 1);
    assert.equal(await punchHole(`${path}.gone`, 0, 4096), false);
  } finally {
    await Deno.remove(path);
  }
});
