import assert from "node:assert/strict";
import { favorDynmods, favorsDynmods, OFF_REASON } from "./favor_dynmods.ts";
import { parseMountinfo } from "./mounts.ts";

const BASE = [
  "22 1 8:1 / / rw,relatime - ext4 /dev/vda rw",
  "27 22 0:25 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755",
  "30 27 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory",
].join("\n");
const OURS = "45 27 0:40 / /run/inferx/cgroup-favordynmods rw,relatime - cgroup " +
  "inferx-favordynmods rw,favordynmods,name=inferx-favordynmods";
const NODE_V2 = "31 27 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 " +
  "rw,nsdelegate,favordynmods";

/** A node whose mounts change as the fake `mount` and `umount` run. */
function fakeNode(lines: string[], fail?: string) {
  const calls: string[] = [];
  return {
    calls,
    mountinfo: () => Promise.resolve(lines.join("\n")),
    run(cmd: string, args: string[]) {
      calls.push([cmd, ...args].join(" "));
      if (fail) return Promise.reject(new Error(fail));
      if (cmd === "mount") {
        const name = /name=([^,]+)/.exec(args[3])![1];
        lines.push(
          `46 27 0:41 / ${args[5]} rw,relatime - cgroup ${name} rw,favordynmods,name=${name}`,
        );
      } else {
        const i = lines.findLastIndex((l) => l.split(" ")[4] === args[0]);
        lines.splice(i, 1);
      }
      return Promise.resolve("");
    },
  };
}

Deno.test("favorsDynmods() knows a cgroup hierarchy, v1 or v2, mounted with favordynmods", () => {
  const [plain, ours, v2] = parseMountinfo([BASE, OURS, NODE_V2].join("\n")).slice(2);
  assert.equal(favorsDynmods(plain), false);
  assert.equal(favorsDynmods(ours), true);
  assert.equal(favorsDynmods(v2), true);
  // An option of the mount point, not of the hierarchy, does not count.
  const [bind] = parseMountinfo("50 22 0:50 / /x rw,favordynmods - ext4 /dev/vdb rw");
  assert.equal(favorsDynmods(bind), false);
});

Deno.test("favorDynmods() mounts the agent's hierarchy where none favors moves, once", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const node = fakeNode([BASE]);
    const o = { ...node, dir: `${dir}/fd`, root: true };
    assert.deepEqual(await favorDynmods(o), { state: "mounted", mountPoint: `${dir}/fd` });
    assert.deepEqual(node.calls, [
      `mount -t cgroup -o none,name=inferx-favordynmods,favordynmods inferx-favordynmods ${dir}/fd`,
    ]);
    assert.ok((await Deno.stat(`${dir}/fd`)).isDirectory);
    // The next agent finds it there.
    assert.deepEqual(await favorDynmods(o), { state: "mounted", mountPoint: `${dir}/fd` });
    assert.equal(node.calls.length, 1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("favorDynmods() leaves a node whose own hierarchy favors moves as it is", async () => {
  const node = fakeNode([BASE, NODE_V2]);
  assert.deepEqual(await favorDynmods({ ...node, root: true }), {
    state: "node",
    mountPoint: "/sys/fs/cgroup/unified",
  });
  assert.deepEqual(node.calls, []);
});

Deno.test("favorDynmods() says why moves still wait: not root, or the mount refused", async () => {
  const node = fakeNode([BASE]);
  const notRoot = await favorDynmods({ ...node, root: false });
  assert.equal(notRoot.state, "off");
  assert.match(notRoot.reason!, /needs root/);
  assert.deepEqual(node.calls, []);

  const dir = await Deno.makeTempDir();
  try {
    const refused = fakeNode([BASE], "mount: wrong fs type, bad option");
    const s = await favorDynmods({ ...refused, dir: `${dir}/fd`, root: true });
    assert.equal(s.state, "off");
    assert.match(s.reason!, /Linux 6\.0 or later.*bad option/);
    assert.equal(await Deno.stat(`${dir}/fd`).catch(() => undefined), undefined, "dir removed");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("favorDynmods() unmounts what it mounted when the mount came without the option", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // A hierarchy of the name mounted before without the option: a new mount takes it as it was.
    const lines = [BASE];
    const calls: string[] = [];
    const s = await favorDynmods({
      dir: `${dir}/fd`,
      root: true,
      mountinfo: () => Promise.resolve(lines.join("\n")),
      run(cmd, args) {
        calls.push(cmd);
        if (cmd === "mount") {
          lines.push(`46 27 0:41 / ${args[5]} rw - cgroup x rw,name=inferx-favordynmods`);
        } else lines.pop();
        return Promise.resolve("");
      },
    });
    assert.equal(s.state, "off");
    assert.match(s.reason!, /mounted without favordynmods/);
    assert.deepEqual(calls, ["mount", "umount"]);
    assert.deepEqual(lines, [BASE]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("favorDynmods() switched off unmounts the agent's hierarchy, every mount of it, and only it", async () => {
  const node = fakeNode([BASE, OURS, OURS.replace(/^45/, "47")]);
  assert.deepEqual(await favorDynmods({ ...node, enabled: false, root: true }), {
    state: "off",
    reason: OFF_REASON,
  });
  assert.deepEqual(node.calls, [
    "umount /run/inferx/cgroup-favordynmods",
    "umount /run/inferx/cgroup-favordynmods",
  ]);

  const shared = fakeNode([BASE, NODE_V2, OURS]);
  assert.deepEqual(await favorDynmods({ ...shared, enabled: false, root: true }), {
    state: "node",
    mountPoint: "/sys/fs/cgroup/unified",
  });
  assert.deepEqual(shared.calls, ["umount /run/inferx/cgroup-favordynmods"]);

  const stuck = fakeNode([BASE, OURS], "umount: target is busy");
  const s = await favorDynmods({ ...stuck, enabled: false, root: true });
  assert.equal(s.state, "mounted");
  assert.match(s.reason!, /cannot be unmounted: umount: target is busy/);
});

Deno.test({
  name: "favorDynmods() mounts a real hierarchy with favordynmods, and unmounts it",
  ignore: Deno.uid?.() !== 0 || Deno.build.os !== "linux",
  async fn() {
    // A name and a place of the test's own: the node's hierarchy, if any, is left alone.
    const dir = await Deno.makeTempDir({ prefix: "inferx-dynmods-" });
    const name = `inferx-test-${crypto.randomUUID().slice(0, 8)}`;
    const node = parseMountinfo(await Deno.readTextFile("/proc/self/mountinfo"));
    if (node.some(favorsDynmods)) {
      console.log("  a hierarchy here favors moves already: the test mounts its own all the same");
    }
    try {
      // Not asked whether one is there: told to mount its own.
      const s = await favorDynmods({
        name,
        dir: `${dir}/fd`,
        mountinfo: async () =>
          (await Deno.readTextFile("/proc/self/mountinfo")).split("\n")
            .filter((l) => !/favordynmods/.test(l) || l.includes(`name=${name}`)).join("\n"),
      });
      if (s.state === "off") {
        console.log(`  skipped: this kernel cannot: ${s.reason}`);
        return;
      }
      assert.deepEqual(s, { state: "mounted", mountPoint: `${dir}/fd` });
      const mounted = parseMountinfo(await Deno.readTextFile("/proc/self/mountinfo"))
        .find((m) => m.point === `${dir}/fd`);
      assert.ok(mounted && favorsDynmods(mounted), "mounted with favordynmods");
      assert.ok(mounted.superOpts.includes(`name=${name}`));
      const off = await favorDynmods({ name, dir: `${dir}/fd`, enabled: false });
      assert.notEqual(off.state, "mounted");
      assert.equal(
        parseMountinfo(await Deno.readTextFile("/proc/self/mountinfo"))
          .some((m) => m.point === `${dir}/fd`),
        false,
      );
    } finally {
      await new Deno.Command("umount", { args: [`${dir}/fd`], stderr: "null" }).output();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
