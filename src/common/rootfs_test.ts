import assert from "node:assert/strict";
import { linkedLibraries, RootFs, run } from "./rootfs.ts";

/** `tar -tv` of `path`: name -> "mode owner" (plus the link target). */
async function listing(path: string): Promise<Map<string, string>> {
  const out = await run("tar", ["--numeric-owner", "-tvf", path]);
  return new Map(
    out.trim().split("\n").map((l) => {
      const [mode, owner, , , , name, ...rest] = l.split(/\s+/);
      return [name.replace(/^\.\//, "/").replace(/\/$/, ""), [mode, owner, ...rest].join(" ")];
    }),
  );
}

Deno.test("RootFs.tar() archives links as links, owned directories with their owner, the rest as root", async () => {
  const src = await Deno.makeTempDir();
  const fs = await RootFs.create();
  const tar = `${fs.dir}.tar`;
  try {
    await Deno.mkdir(`${src}/pkg/.cache`, { recursive: true });
    await Deno.writeTextFile(`${src}/pkg/index.js`, "x");
    await Deno.writeTextFile(`${src}/pkg/.cache/junk`, "x");
    await Deno.symlink("pkg/index.js", `${src}/link`);
    await fs.copyTree(src, "/app", { skip: (rel) => rel === "pkg/.cache/" });
    await fs.mkdir("/tmp", { mode: 0o1777 });
    await fs.mkdir("/data", { owner: 65532 });
    await fs.writeFile("/etc/passwd", "root:x:0:0::/:/sbin/nologin\n");
    await fs.tar(tar);
    const l = await listing(tar);
    assert.equal(l.get("/app/link"), "lrwxrwxrwx 0/0 -> pkg/index.js");
    assert.match(l.get("/app/pkg/index.js")!, /^-rw-.* 0\/0$/);
    assert.ok(!l.has("/app/pkg/.cache"), "skipped");
    assert.equal(l.get("/tmp"), "drwxrwxrwt 0/0");
    assert.equal(l.get("/data"), "drwxr-xr-x 65532/65532");
    assert.deepEqual([...fs.owned], [["/data", 65532]]);
    // Reproducible: the same tree gives the same bytes.
    const again = `${fs.dir}.2.tar`;
    await fs.tar(again);
    assert.deepEqual(await Deno.readFile(again), await Deno.readFile(tar));
    await Deno.remove(again);
  } finally {
    await fs.remove();
    await Deno.remove(tar).catch(() => {});
    await Deno.remove(src, { recursive: true });
  }
});

Deno.test("RootFs refuses paths outside the image", async () => {
  const fs = await RootFs.create();
  try {
    await assert.rejects(fs.writeFile("/../etc/x", ""), /Invalid image path/);
    await assert.rejects(fs.mkdir("relative"), /Invalid image path/);
  } finally {
    await fs.remove();
  }
});

Deno.test("linkedLibraries() lists the loader and libc of a dynamic binary", async () => {
  const libs = await linkedLibraries(Deno.execPath());
  assert.ok(libs.some((l) => /\/ld-linux[^/]*\.so/.test(l)), libs.join(" "));
  assert.ok(libs.some((l) => /\/libc\.so/.test(l)), libs.join(" "));
  assert.ok(libs.every((l) => l.startsWith("/")));
});
