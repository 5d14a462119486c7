import assert from "node:assert/strict";
import { type CheckResult, Criu, criuCapability, locateCriu } from "./criu.ts";
import {
  type CacheMaker,
  dropStaleCriuCache,
  fsTypeOf,
  KDAT_FILE,
  keepCriuCache,
  prepareCriuCache,
  STALE_TMP_MS,
} from "./criu_cache.ts";

/** Mount lines as the kernel writes them (this VM's: `/` on ext4, `/run` a directory of it). */
const EXT4_RUN = `
23 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
24 23 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw,size=12288k
31 23 254:0 /run/netns /run/netns rw,relatime shared:5 - ext4 /dev/vda rw
40 23 0:40 / /tmp/with\\040space rw - tmpfs tmpfs rw
`;

Deno.test("fsTypeOf() takes the longest mount point that holds the path, the last one stacked on it", () => {
  assert.equal(fsTypeOf("/run", EXT4_RUN), "ext4");
  assert.equal(fsTypeOf("/run/netns", EXT4_RUN), "ext4");
  assert.equal(fsTypeOf("/dev/shm", EXT4_RUN), "devtmpfs");
  assert.equal(fsTypeOf("/devices", EXT4_RUN), "ext4", "a prefix of the name is not a parent");
  assert.equal(fsTypeOf("/tmp/with space/x", EXT4_RUN), "tmpfs", "octal escapes read");
  const stacked = `${EXT4_RUN}50 23 0:50 / /run rw,nosuid - tmpfs tmpfs rw,mode=755\n`;
  assert.equal(fsTypeOf("/run", stacked), "tmpfs");
  assert.equal(fsTypeOf("/run", `${stacked}51 50 254:0 / /run rw - ext4 /dev/vda rw\n`), "ext4");
  assert.equal(fsTypeOf("/run", "garbage\nno dash here"), undefined);
});

/** A maker that writes `bytes` (or fails) and counts its runs. */
function fakeMaker(bytes: Uint8Array | CheckResult = new Uint8Array([1, 2, 3])) {
  const runs = { made: 0, loads: 0 };
  const maker: CacheMaker = {
    async makeKernelCache(dest) {
      runs.made++;
      if (!(bytes instanceof Uint8Array)) return bytes;
      await Deno.writeFile(dest, bytes);
      return { ok: true };
    },
    loadsKernelCache() {
      runs.loads++;
      return Promise.resolve(true);
    },
  };
  return { maker, runs };
}

/** A temporary folder standing for `/run`, and mount lines giving it `type`. */
async function runDir(type: string) {
  const dir = await Deno.makeTempDir();
  const mountinfo = `23 1 254:0 / / rw - ext4 /dev/vda rw\n60 23 0:60 / ${dir} rw - ${type} x rw\n`;
  return { dir, file: `${dir}/criu.kdat`, mountinfo };
}

Deno.test("dropStaleCriuCache() on a tmpfs removes a criu.kdat.tmp a killed CRIU left, not one being written", async () => {
  const { dir, file, mountinfo } = await runDir("tmpfs");
  try {
    const now = Date.now();
    await Deno.writeFile(file, new Uint8Array([1]));
    await Deno.writeFile(`${file}.tmp`, new Uint8Array());
    assert.equal(await dropStaleCriuCache({ file, mountinfo, now }), undefined);
    assert.ok(await Deno.stat(`${file}.tmp`), "one just written (a CRIU saving its cache) stays");
    const old = new Date(now - STALE_TMP_MS - 1000);
    await Deno.utime(`${file}.tmp`, old, old);
    assert.match(await dropStaleCriuCache({ file, mountinfo, now }) ?? "", /killed while it wrote/);
    await assert.rejects(Deno.stat(`${file}.tmp`), Deno.errors.NotFound);
    assert.ok(await Deno.stat(file), "CRIU's own cache on a tmpfs is CRIU's to keep");
    const { maker, runs } = fakeMaker();
    const opts = { file, mountinfo, criu: "4.2.1 /x/criu", bootId: "b1" };
    assert.deepEqual(await prepareCriuCache(maker, opts), { state: "tmpfs" });
    assert.equal(runs.made, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("dropStaleCriuCache() elsewhere removes a cache of an earlier boot, and one of unknown making unless seeding is off", async () => {
  const { dir, file, mountinfo } = await runDir("ext4");
  try {
    const opts = { file, mountinfo, bootId: "b2" };
    const old = new Date(Date.now() - STALE_TMP_MS - 1000);
    await Deno.writeFile(`${file}.tmp`, new Uint8Array());
    await Deno.utime(`${file}.tmp`, old, old);
    assert.equal(await dropStaleCriuCache(opts), undefined, "nothing to drop");
    assert.ok(await Deno.stat(`${file}.tmp`), "kept: it keeps CRIU from removing the cache");
    // This boot's stays.
    await Deno.writeFile(file, new Uint8Array([1]));
    await Deno.writeTextFile(`${file}.inferx`, JSON.stringify({ bootId: "b2", criu: "c" }));
    assert.equal(await dropStaleCriuCache(opts), undefined);
    // An earlier boot's goes, with its note, seeding or not.
    await Deno.writeTextFile(`${file}.inferx`, JSON.stringify({ bootId: "b1", criu: "c" }));
    assert.match(await dropStaleCriuCache(opts) ?? "", /an earlier boot/);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["criu.kdat.tmp"]);
    // One without a note is not the agent's when it seeds none.
    await Deno.writeFile(file, new Uint8Array([1]));
    assert.equal(await dropStaleCriuCache({ ...opts, seed: false }), undefined);
    assert.match(await dropStaleCriuCache(opts) ?? "", /unknown making/);
    await assert.rejects(Deno.stat(file), Deno.errors.NotFound);
    // Its own of this boot goes, guard and all, once seeding is off, or when the boot is unknown.
    for (const o of [{ ...opts, seed: false }, { ...opts, bootId: "" }]) {
      await Deno.writeFile(file, new Uint8Array([1]));
      await Deno.writeTextFile(`${file}.inferx`, JSON.stringify({ bootId: "b2", criu: "c" }));
      await Deno.writeFile(`${file}.tmp`, new Uint8Array());
      assert.match(await dropStaleCriuCache(o) ?? "", /INFERX_CRIU_CACHE=off|cannot be told/);
      assert.deepEqual([...Deno.readDirSync(dir)], [], JSON.stringify(o));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("prepareCriuCache() seeds the cache on a /run that is no tmpfs, once per boot and CRIU, with its guard", async () => {
  const { dir, file, mountinfo } = await runDir("ext4");
  try {
    const { maker, runs } = fakeMaker(new Uint8Array([7, 7, 7, 7]));
    const opts = { file, mountinfo, criu: "4.2.1 /x/criu", bootId: "b1" };
    assert.deepEqual(await prepareCriuCache(maker, opts), { state: "seeded" });
    assert.deepEqual(await Deno.readFile(file), new Uint8Array([7, 7, 7, 7]));
    assert.deepEqual(JSON.parse(await Deno.readTextFile(`${file}.inferx`)), {
      bootId: "b1",
      criu: "4.2.1 /x/criu",
    });
    assert.equal((await Deno.stat(file)).mode! & 0o777, 0o600);
    // Kept for the same boot and CRIU; made again for another boot, or another CRIU.
    assert.deepEqual(await prepareCriuCache(maker, opts), { state: "seeded" });
    assert.equal(runs.made, 1);
    await prepareCriuCache(maker, { ...opts, bootId: "b2" });
    await prepareCriuCache(maker, { ...opts, bootId: "b2", criu: "4.2.2 /x/criu" });
    assert.equal(runs.made, 3);
    // An emptied or removed cache is made again; so is the guard.
    await Deno.writeFile(file, new Uint8Array());
    await Deno.remove(`${file}.tmp`);
    await prepareCriuCache(maker, { ...opts, bootId: "b2", criu: "4.2.2 /x/criu" });
    assert.equal(runs.made, 4);
    // Only CRIU's own path is checked by CRIU (a `criu check` reads nothing else).
    assert.equal(runs.loads, 0);
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(names, ["criu.kdat", "criu.kdat.inferx", "criu.kdat.tmp"], "no part file");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("keepCriuCache() makes the cache again once it is gone, once for runs that find it gone together", async () => {
  const { dir, file, mountinfo } = await runDir("ext4");
  try {
    const { maker, runs } = fakeMaker();
    const opts = { file, mountinfo, criu: "4.2.1 /x/criu", bootId: "b1" };
    const heard: string[] = [];
    const keep = keepCriuCache(maker, opts, (s) => heard.push(s.state));
    assert.deepEqual(await prepareCriuCache(maker, opts), { state: "seeded" });
    await keep();
    assert.equal(runs.made, 1, "there: nothing made");
    await Deno.remove(file); // what a CRIU of another build does as it loads it
    await Promise.all([keep(), keep(), keep()]);
    assert.equal(runs.made, 2);
    assert.deepEqual(heard, ["seeded"]);
    assert.ok((await Deno.stat(file)).size > 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("prepareCriuCache() says why the cache is off: switched off, or not made", async () => {
  const { dir, file, mountinfo } = await runDir("ext4");
  try {
    const opts = { file, mountinfo, criu: "4.2.1 /x/criu", bootId: "b1" };
    const off = await prepareCriuCache(fakeMaker().maker, { ...opts, seed: false });
    assert.equal(off.state, "off");
    assert.match(off.reason!, /is ext4, not a tmpfs, and INFERX_CRIU_CACHE=off/);
    const failed = await prepareCriuCache(
      fakeMaker({ ok: false, reason: "mount: permission denied" }).maker,
      opts,
    );
    assert.equal(failed.state, "off");
    assert.match(failed.reason!, /making it failed: mount: permission denied/);
    const empty = await prepareCriuCache(fakeMaker(new Uint8Array()).maker, opts);
    assert.match(empty.reason!, /empty cache/);
    assert.deepEqual([...Deno.readDirSync(dir)], [], "nothing put in place");
    const unread = await prepareCriuCache(fakeMaker().maker, {
      ...opts,
      mountinfo: "",
      seed: false,
    });
    assert.match(unread.reason!, /is on no mount found/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const criuBin = locateCriu();
// One that fails its check (Debian 12's on a recent kernel) makes no cache either: skipped, as
// the snapshot tests are.
const criuCap = criuBin && Deno.build.os === "linux" ? await criuCapability(criuBin) : undefined;
if (criuCap && !criuCap.available) {
  console.log(`skipping the CRIU kernel cache test: ${criuCap.reason}`);
}
Deno.test({
  name: "with the node's CRIU, the cache is CRIU's own, or made for it, and CRIU loads it",
  ignore: !criuBin || !criuCap?.available || Deno.uid?.() !== 0 || Deno.build.os !== "linux",
  async fn() {
    const criu = new Criu(criuBin!);
    const version = await criu.version();
    // Made in a mount namespace of its own: the real /run is left as it was.
    const before = await Deno.stat(KDAT_FILE).catch(() => undefined);
    const dest = await Deno.makeTempFile();
    try {
      assert.deepEqual(await criu.makeKernelCache(dest), { ok: true });
      assert.ok((await Deno.stat(dest)).size > 0, "a cache written");
    } finally {
      await Deno.remove(dest);
    }
    assert.equal(
      (await Deno.stat(KDAT_FILE).catch(() => undefined))?.mtime?.getTime(),
      before?.mtime?.getTime(),
    );
    const state = await prepareCriuCache(criu, { criu: `${version} ${criuBin!.path}` });
    const type = fsTypeOf("/run", await Deno.readTextFile("/proc/self/mountinfo"));
    assert.equal(state.state, type === "tmpfs" ? "tmpfs" : "seeded", state.reason);
    if (state.state === "tmpfs") {
      console.log("  /run is a tmpfs here: CRIU keeps its cache itself; seeding not run");
      return;
    }
    assert.ok(await criu.loadsKernelCache(), "criu check loads the seeded cache");
    assert.ok(await Deno.stat(KDAT_FILE), "and leaves it there");
    assert.ok(await Deno.stat(`${KDAT_FILE}.tmp`), "its guard beside it");
  },
});

Deno.test({
  name:
    "makeKernelCache() says what CRIU said when it wrote no cache, and leaves the real /run alone",
  ignore: Deno.uid?.() !== 0 || Deno.build.os !== "linux",
  async fn() {
    // A "criu" that fails its check the way CRIU says so, writing nothing.
    const criu = new Criu({
      argv: [
        "bash",
        "-c",
        'echo "Error (criu/kerndat.c:1): kerndat_init failed" >&2; exit 1',
        "criu",
      ],
      path: "bash",
      source: "system",
    });
    const dest = await Deno.makeTempFile();
    try {
      const r = await criu.makeKernelCache(dest);
      assert.equal(r.ok, false);
      assert.match(r.ok ? "" : r.reason, /kerndat_init failed/);
      assert.equal((await Deno.stat(dest)).size, 0);
    } finally {
      await Deno.remove(dest);
    }
  },
});
