/**
 * Snapshot cold starts end to end on the process runtime: the first pod of a
 * version starts fresh, answers its sample query and is snapshotted; later
 * cold starts restore it (several side by side); a corrupt or missing image,
 * or a worker CRIU cannot dump, falls back to fresh starts with the reason
 * noted and audited; a new version or a delete removes the snapshot.
 */
import assert from "node:assert/strict";
import {
  createNamespace,
  eventually,
  type Json,
  ngramFunction,
  putObject,
  request,
  startPlatform,
} from "./helpers.ts";
import { criuCapability } from "../../src/nodeagent/criu.ts";
import { fsTypeOf } from "../../src/nodeagent/criu_cache.ts";
import { favorsDynmods } from "../../src/nodeagent/favor_dynmods.ts";
import { parseMountinfo } from "../../src/nodeagent/mounts.ts";
import { hugePageMode } from "../../src/nodeagent/discover.ts";
import { PodNetworks } from "../../src/nodeagent/pod_net.ts";

const criu = await criuCapability();
const nets = criu.available
  ? await new PodNetworks({ prefix: "ixe2e" }).capability()
  : { available: false, reason: criu.reason };
const skip = !criu.available ? criu.reason : !nets.available ? nets.reason : undefined;
if (skip) console.log(`skipping the snapshot end-to-end test: ${skip}`);

/**
 * A worker that takes a while to load (and to answer `/slow`), counts the calls it serves and says
 * who it was born as (a restored copy was born as the snapshotted pod, unless its restore hook,
 * `/restored`, made it anew: with FAIL_HOOK that hook fails).
 * With HOLD_UNIX it keeps a connection to a Unix socket outside its pod,
 * which CRIU cannot dump. With DIE_FILE, a copy started before that file was
 * written (one restored from a snapshot taken before) exits at its probe.
 */
const WORKER = `
// From the operating system: Deno's own generator (crypto.*) is process memory, which a restored
// copy shares with its snapshot.
const fresh = () => {
  const f = Deno.openSync("/dev/urandom");
  const b = new Uint8Array(16);
  f.readSync(b);
  f.close();
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
};
let born = fresh();
const startedAt = Date.now();
const die = Deno.env.get("DIE_FILE");
let n = 0;
let hooked = 0;
const hold = Deno.env.get("HOLD_UNIX");
if (hold) globalThis.held = await Deno.connect({ transport: "unix", path: hold });
await new Promise((r) => setTimeout(r, 1500)); // loading weights
console.log("worker loaded");
Deno.addSignalListener("SIGTERM", () => Deno.exit(0));
Deno.serve({ port: Number(Deno.env.get("PORT")), hostname: Deno.env.get("HOST"), onListen() {} }, async (req) => {
  const path = new URL(req.url).pathname;
  if (path === "/health") {
    try {
      if (die && Deno.statSync(die).mtime.getTime() > startedAt) Deno.exit(3);
    } catch {
      // not written yet
    }
    return new Response("ok");
  }
  if (path === "/restored" && req.method === "POST") {
    if (Deno.env.get("FAIL_HOOK")) return new Response("cannot reseed", { status: 500 });
    born = fresh();
    hooked++;
    return new Response(null, { status: 204 });
  }
  if (path === "/slow") await new Promise((r) => setTimeout(r, 1000));
  n++;
  console.log("served", n);
  return Response.json({ n, born, hooked });
});`;

function fn(name: string, envs: [string, string][] = [], endpoint: Json = {}) {
  return {
    type: "function",
    tenant: "t",
    namespace: "n",
    name,
    object: {
      spec: {
        image: "x",
        commands: ["deno", "eval", WORKER],
        envs,
        endpoint: { port: 8000, probe: "/health", ...endpoint },
        resources: { CPU: 100, Mem: 64 },
        sample_query: { path: "/warm", body: { prompt: "The GPU" } },
        policy: { Obj: { max_replica: 2, parallel: 1, scalein_timeout: 0.3, standby_per_node: 0 } },
      },
    },
  };
}

/** Calls of a function of t/n on the platform at `url`, its node's snapshots, and a wait for zero pods. */
function helpers(url: string) {
  const call = async (func: string, path = "work") => {
    const r = await request(`${url}/funccall/t/n/${func}/${path}`, { body: {} });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const pods: Json[] = (await request(`${url}/pods/t/n/${func}`)).body;
    const pod = pods.find((q) => q.id === r.headers.get("x-inferx-pod"));
    return { ...r.body, cold: r.headers.get("x-inferx-cold-start") === "1", pod };
  };
  const snapshots = async () => {
    const [node]: Json[] = (await request(`${url}/nodes`)).body;
    return node.snapshots.items as Json[];
  };
  const idle = (func: string) =>
    eventually(`${func} scaled to zero`, async () => {
      return (await request(`${url}/pods/t/n/${func}`)).body.length === 0;
    });
  return { call, snapshots, idle };
}

Deno.test({
  name:
    "Snapshots: a version's first pod is snapshotted, later cold starts restore it side by side, failures fall back to fresh starts",
  ignore: skip !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const p = await startPlatform({ INFERX_RUNTIME: "process" });
    const unixDir = await Deno.makeTempDir();
    const holder = Deno.listen({ transport: "unix", path: `${unixDir}/held.sock` });
    const accepted: Deno.Conn[] = [];
    (async () => {
      for await (const c of holder) accepted.push(c);
    })().catch(() => {});
    const { call, snapshots, idle } = helpers(p.url);
    const image = `${p.dataDir}/snapshots/images/t/n/snap.v1.node1`;
    try {
      const [node]: Json[] = (await request(`${p.url}/nodes`)).body;
      assert.equal(node.criu.available, true);
      assert.match(node.criu.version, /^4\./);
      // CRIU's kernel cache: its own on a tmpfs /run, else made by the agent (`criu_cache.ts`).
      const runType = fsTypeOf("/run", await Deno.readTextFile("/proc/self/mountinfo"));
      assert.equal(
        node.criu.kernelCache,
        runType === "tmpfs" ? "tmpfs" : "seeded",
        node.criu.kernelCacheReason,
      );
      assert.equal(node.snapshots.available, true, node.snapshots.reason);
      // Pod starts' control group moves wait for no grace period (`favor_dynmods.ts`): the agent
      // mounted its hierarchy for it, or the node has one, or the kernel cannot (it says why).
      if (node.favorDynmods === undefined) {
        console.log("  no pod control groups here: no control group moves to report");
      } else if (node.favorDynmods.state === "off") {
        assert.match(node.favorDynmods.reason, /cannot mount|needs root/);
        console.log(`  control group moves wait here: ${node.favorDynmods.reason}`);
      } else {
        assert.match(node.favorDynmods.state, /^(mounted|node)$/);
        const m = parseMountinfo(await Deno.readTextFile("/proc/self/mountinfo"))
          .find((x) => x.point === node.favorDynmods.mountPoint);
        assert.ok(m && favorsDynmods(m), "mounted with favordynmods");
      }
      // The kernel's huge page mode, which decides how a restore fills memory.
      assert.equal(node.snapshots.hugePages, hugePageMode());
      assert.match(node.snapshots.hugePages, /^(always|madvise|never)$/);
      await createNamespace(p.url, "t", "n");
      assert.equal((await putObject(p.url, fn("snap"))).status, 201);

      // 1. A fresh start: the sample query was its first call, then it was snapshotted.
      const first = await call("snap");
      assert.equal(first.cold, true);
      assert.equal(first.n, 2);
      assert.equal(first.pod.startedFrom, "fresh");
      assert.equal(first.pod.note, undefined);
      assert.deepEqual(
        (await snapshots()).map((s) => [s.func, s.version, s.state]),
        [["t/n/snap", 1, "Ready"]],
      );
      assert.ok((await snapshots())[0].sizeMB > 1);
      await idle("snap");

      // 2. The next cold start is a restore: same birth, its count goes on from the snapshot.
      const restored = await call("snap");
      assert.equal(restored.cold, true);
      assert.equal(restored.pod.startedFrom, "snapshot");
      assert.deepEqual([restored.born, restored.n], [first.born, 2]);
      await idle("snap");

      // 3. Two at once (parallel 1): two copies of one snapshot serve side by side.
      const both = await Promise.all([call("snap", "slow"), call("snap", "slow")]);
      assert.notEqual(both[0].pod.id, both[1].pod.id);
      assert.notEqual(both[0].pod.endpoint, both[1].pod.endpoint);
      for (const b of both) {
        assert.equal(b.pod.startedFrom, "snapshot");
        assert.deepEqual([b.born, b.n], [first.born, 2]);
      }
      await idle("snap");
      // Counted in the metrics by how they came up: one fresh start, three restores.
      const metrics = await (await fetch(`${p.url}/metrics`)).text();
      assert.match(metrics, /^inferx_pod_starts_total\{function="t\/n\/snap",from="fresh"\} 1$/m);
      assert.match(
        metrics,
        /^inferx_pod_starts_total\{function="t\/n\/snap",from="snapshot"\} 3$/m,
      );

      // 4. A corrupt image: a fresh start, noted and audited; a new snapshot is taken.
      await Deno.truncate(`${image}/inventory.img`, 0);
      const afterCorrupt = await call("snap");
      assert.equal(afterCorrupt.pod.startedFrom, "fresh");
      assert.notEqual(afterCorrupt.born, first.born);
      assert.match(afterCorrupt.pod.note, /could not be restored, started fresh/);
      await eventually("the pod audit row with the note", async () => {
        const rows: Json[] = (await request(`${p.url}/audit/pods?tenant=t&namespace=n&func=snap`))
          .body.items;
        return rows.some((r) =>
          r.pod === afterCorrupt.pod.id && /could not be restored/.test(r.reason)
        );
      });
      assert.equal((await snapshots())[0].state, "Ready");
      await idle("snap");
      assert.equal((await call("snap")).born, afterCorrupt.born, "restored from the new snapshot");
      await idle("snap");

      // 5. A missing image: likewise.
      await Deno.remove(image, { recursive: true });
      const afterMissing = await call("snap");
      assert.equal(afterMissing.pod.startedFrom, "fresh");
      assert.match(afterMissing.pod.note, /could not be restored/);
      await idle("snap");

      // 6. A worker CRIU cannot dump: the reason is recorded once; it keeps starting fresh.
      assert.equal(
        (await putObject(p.url, fn("held", [["HOLD_UNIX", `${unixDir}/held.sock`]]))).status,
        201,
      );
      const h1 = await call("held");
      assert.equal(h1.pod.startedFrom, "fresh");
      assert.match(h1.pod.note, /^No snapshot taken: Cannot dump/);
      const failed = (await snapshots()).find((s) => s.func === "t/n/held");
      assert.equal(failed.state, "Failed");
      assert.match(failed.error, /unix/i, "CRIU's own reason");
      console.log(`CRIU's reason: ${failed.error}`);
      await idle("held");
      const h2 = await call("held");
      assert.equal(h2.pod.startedFrom, "fresh");
      assert.notEqual(h2.born, h1.born);
      assert.equal(h2.pod.note, undefined, "not tried again");

      // 7. A new version, then a delete, remove the function's snapshots.
      const cur = await request(`${p.url}/object/function/t/n/snap`);
      const update = fn("snap", [["V", "2"]]);
      const r = await request(`${p.url}/object/`, {
        method: "POST",
        body: { ...update, revision: cur.body.revision },
      });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      await eventually("the v1 snapshot gone", async () => {
        return !(await snapshots()).some((s) => s.func === "t/n/snap" && s.version === 1);
      });
      await request(`${p.url}/object/function/t/n/held`, { method: "DELETE" });
      await eventually("the held snapshot record gone", async () => {
        return !(await snapshots()).some((s) => s.func === "t/n/held");
      });
    } finally {
      holder.close();
      for (const c of accepted) c.close();
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
      await Deno.remove(unixDir, { recursive: true });
    }
  },
});

/** Pids of processes whose environment holds `entry` (`K=V`, ASCII). */
function withEnv(entry: string): number[] {
  const pids: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const env = new TextDecoder("latin1").decode(Deno.readFileSync(`/proc/${e.name}/environ`));
      if (`\0${env}`.includes(`\0${entry}\0`)) pids.push(Number(e.name));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

Deno.test({
  name:
    "Snapshots: a restored copy that exits before it answers its probe gives way to a fresh start under its pod, and leaves no worker behind",
  ignore: skip !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const p = await startPlatform({ INFERX_RUNTIME: "process" });
    const { call, idle } = helpers(p.url);
    const die = `${p.dataDir}/die-now`;
    try {
      await createNamespace(p.url, "t", "n");
      assert.equal((await putObject(p.url, fn("dies", [["DIE_FILE", die]]))).status, 201);
      const first = await call("dies");
      assert.equal(first.pod.startedFrom, "fresh");
      await idle("dies");
      await Deno.writeTextFile(die, ""); // copies of the snapshot taken before it now exit
      const next = await call("dies");
      assert.equal(next.pod.startedFrom, "fresh");
      assert.match(next.pod.note, /could not be restored, started fresh/);
      assert.notEqual(next.born, first.born);
      await idle("dies");
      await eventually(
        "no worker of it left",
        () => Promise.resolve(withEnv(`DIE_FILE=${die}`).length === 0),
      );
    } finally {
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "Snapshots: each restored copy is told by its restore hook before it serves (and makes itself anew); a copy whose hook fails is not served, the pod starts fresh",
  ignore: skip !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const p = await startPlatform({ INFERX_RUNTIME: "process" });
    const { call, idle, snapshots } = helpers(p.url);
    const hook = { restore_hook: "/restored" };
    try {
      await createNamespace(p.url, "t", "n");
      assert.equal((await putObject(p.url, fn("hook", [], hook))).status, 201);
      const first = await call("hook");
      assert.deepEqual([first.pod.startedFrom, first.hooked], ["fresh", 0]);
      await idle("hook");
      // Two copies side by side: each told once, each its own birth, the snapshot's count kept.
      const both = await Promise.all([call("hook", "slow"), call("hook", "slow")]);
      for (const b of both) {
        assert.equal(b.pod.startedFrom, "snapshot");
        assert.deepEqual([b.hooked, b.n], [1, 2]);
        assert.notEqual(b.born, first.born);
      }
      assert.notEqual(both[0].born, both[1].born, "no two copies share what they made at birth");
      await idle("hook");

      // A hook that fails: that copy never serves; the pod starts fresh, the note says why.
      const failing = fn("badhook", [["FAIL_HOOK", "1"]], hook);
      assert.equal((await putObject(p.url, failing)).status, 201);
      const b1 = await call("badhook");
      assert.equal(b1.pod.startedFrom, "fresh");
      await idle("badhook");
      const b2 = await call("badhook");
      assert.equal(b2.pod.startedFrom, "fresh");
      assert.notEqual(b2.born, b1.born);
      assert.match(
        b2.pod.note,
        /could not be restored, started fresh: .*restore hook \/restored answered 500/,
      );
      // Its version is not snapshotted again (another copy would fail the same): fresh starts.
      const failed = (await snapshots()).find((x) => x.func === "t/n/badhook");
      assert.equal(failed.state, "Failed");
      assert.match(failed.error, /restore hook \/restored answered 500/);
      await idle("badhook");
      const b3 = await call("badhook");
      assert.deepEqual([b3.pod.startedFrom, b3.pod.note], ["fresh", undefined]);
    } finally {
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "File tier: an idle n-gram worker is dumped to disk (its process gone) and resumed with its socket and its own request count",
  ignore: skip !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const p = await startPlatform({ INFERX_RUNTIME: "process" });
    try {
      await createNamespace(p.url, "t", "n");
      const r = await putObject(p.url, {
        ...ngramFunction("t", "n", "lm", {
          standby: { gpu: "File" },
          endpoint: { port: 8000, probe: "/health" },
          policy: { Obj: { scalein_timeout: 0.3, standby_per_node: 1 } },
        }),
      });
      assert.equal(r.status, 201, JSON.stringify(r.body));
      const complete = () =>
        request(`${p.url}/funccall/t/n/lm/v1/completions`, {
          body: { prompt: "The GPU", max_tokens: 4 },
        });
      const first = await complete();
      assert.equal(first.status, 200);
      const served = Number(first.headers.get("x-worker-requests"));
      const [pod]: Json[] = (await request(`${p.url}/pods/t/n/lm`)).body;
      await eventually("the pod parked in the file tier", async () => {
        const [q]: Json[] = (await request(`${p.url}/pods/t/n/lm`)).body;
        return q?.state === "Standby" && q.standbyTier === "file";
      });
      // Its process is gone (memory freed): nothing runs in its network namespace (the one with
      // its address: a pod may have taken a namespace made ahead, named otherwise).
      const ipText = (...args: string[]) =>
        new TextDecoder().decode(
          new Deno.Command("ip", { args, stdout: "piped", stderr: "null" }).outputSync().stdout,
        );
      const podAddr = String(pod.endpoint).split(":")[0];
      const netns = ipText("netns", "list").split("\n").map((l) => l.split(" ")[0])
        .find((n) =>
          n && ipText("-n", n, "-4", "addr", "show", "dev", "eth0").includes(`${podAddr}/`)
        )!;
      assert.ok(netns, `a namespace with ${podAddr}`);
      const pids = new TextDecoder().decode(
        new Deno.Command("ip", { args: ["netns", "pids", netns], stdout: "piped" }).outputSync()
          .stdout,
      ).trim();
      assert.equal(pids, "", "no process while parked in a file");
      const again = await complete();
      assert.equal(again.status, 200);
      assert.equal(again.headers.get("x-inferx-resumed"), "1");
      assert.equal(again.headers.get("x-inferx-pod"), pod.id);
      assert.equal(Number(again.headers.get("x-worker-requests")), served + 1);
      const [back]: Json[] = (await request(`${p.url}/pods/t/n/lm`)).body;
      assert.equal(back.endpoint, pod.endpoint, "the same listening socket, at the same address");
    } finally {
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
    }
  },
});
