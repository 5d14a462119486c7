import assert from "node:assert/strict";
import { InferxError } from "../common/errors.ts";
import { decodeSnapshot, type SnapshotInfo } from "../model/snapshot.ts";
import type { PodInfo } from "../model/cluster.ts";
import { StateService } from "../statesvc/service.ts";
import { openSqliteStore } from "../store/sqlite.ts";
import type { MetaClient } from "../rpc/types.ts";
import { BUSY, SnapshotManager, type SnapshotRuntime } from "./snapshots.ts";
import { seedNamespace } from "../common/testing.ts";
import { Criu, criuCapability, CriuKilled, locateCriu } from "./criu.ts";
import { PodNetworks } from "./pod_net.ts";
import { ProcessRuntime } from "./process_runtime.ts";

const MB = 1024 * 1024;

/** A runtime that "dumps" by writing `sizeMB` of zeros, or fails as told. */
class FakeRuntime implements SnapshotRuntime {
  sizeMB = 10;
  /** Its memory, when not its image's size. */
  footprintMB?: number;
  fail?: Error;
  /** A dump waits for it. */
  gate?: Promise<void>;
  dumps = 0;
  async snapshot(_podId: string, dir: string) {
    this.dumps++;
    await this.gate;
    await Deno.mkdir(dir, { recursive: true });
    if (this.fail) {
      await Deno.writeFile(`${dir}/pages-1.img`, new Uint8Array(MB)); // half written
      throw this.fail;
    }
    await Deno.writeFile(`${dir}/pages-1.img`, new Uint8Array(this.sizeMB * MB));
    await Deno.writeTextFile(`${dir}/inferx.json`, "{}");
    return { bytes: this.sizeMB * MB, dumpMs: 5 };
  }
  footprintBytes() {
    return Promise.resolve((this.footprintMB ?? this.sizeMB) * MB);
  }
}

async function fixture(budgetMB = 25) {
  const store = await openSqliteStore();
  const meta = new StateService(store);
  await seedNamespace(meta, "t", "n");
  for (const f of ["a", "b", "c"]) await putFunction(meta, f);
  const dir = await Deno.makeTempDir();
  const runtime = new FakeRuntime();
  const open = (diskBudgetMB = budgetMB) =>
    new SnapshotManager({ meta, node: "n1", dir, diskBudgetMB, runtime });
  const mgr = open();
  await mgr.start();
  return {
    meta,
    dir,
    runtime,
    mgr,
    open,
    async dispose() {
      mgr.stop();
      await store.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

async function putFunction(meta: MetaClient, name: string, image = "x", policy?: unknown) {
  const ref = { type: "function" as const, tenant: "t", namespace: "n", name };
  const cur = await meta.get(ref);
  const object = {
    spec: { image, commands: ["w"], resources: { CPU: 100, Mem: 64 }, policy },
  };
  return cur
    ? await meta.update({ ...ref, object, revision: cur.revision })
    : await meta.create({ ...ref, object });
}

function pod(func: string, version = 1, id = `${func}-pod`): PodInfo {
  return {
    id,
    tenant: "t",
    namespace: "n",
    func,
    funcVersion: version,
    node: "n1",
    cpuMillis: 100,
    memMB: 64,
    gpus: [],
    template: {
      image: "x",
      commands: ["w"],
      envs: [],
      mounts: [],
      port: 80,
      probe: "/",
      startupTimeoutS: 5,
    },
    desired: "Running",
    state: "Creating",
    createdAt: 0,
  };
}

async function records(meta: MetaClient): Promise<SnapshotInfo[]> {
  return (await meta.list("snapshot")).items.map((r) => decodeSnapshot(r.value));
}

async function eventually(check: () => Promise<boolean>) {
  for (let i = 0; i < 100 && !await check(); i++) await new Promise((r) => setTimeout(r, 20));
  assert.ok(await check(), "timed out");
}

const t = (name: string, fn: (f: Awaited<ReturnType<typeof fixture>>) => Promise<void>) =>
  Deno.test({
    name,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const f = await fixture();
      try {
        await fn(f);
      } finally {
        await f.dispose();
      }
    },
  });

t(
  "take() snapshots a version once, records it Ready and makes it usable",
  async ({ meta, mgr, runtime }) => {
    assert.equal(mgr.wants(pod("a")), true);
    assert.equal(await mgr.take(pod("a")), undefined);
    assert.equal(await mgr.take(pod("a", 1, "a-pod-2")), undefined);
    assert.equal(runtime.dumps, 1, "one snapshot per version and node");
    const [rec] = await records(meta);
    assert.equal(rec.state, "Ready");
    assert.equal(rec.bytes, 10 * MB);
    assert.equal(rec.sourcePod, "a-pod");
    assert.ok(mgr.usable(pod("a")));
    assert.equal(mgr.usable(pod("a", 2)), undefined);
    assert.deepEqual(mgr.summary().items.map((i) => [i.func, i.version, i.state]), [[
      "t/n/a",
      1,
      "Ready",
    ]]);
  },
);

t(
  "a dump CRIU refuses is recorded once with its reason, and the version is not tried again",
  async ({ meta, mgr, runtime, dir }) => {
    runtime.fail = new Error(
      "Cannot dump process 7: Error (criu/sk-unix.c:180): sk unix: Can't dump half of stream unix connection",
    );
    const note = await mgr.take(pod("a"));
    assert.match(note!, /No snapshot taken: .*half of stream unix connection/);
    const [rec] = await records(meta);
    assert.equal(rec.state, "Failed");
    assert.match(rec.error!, /half of stream unix connection/);
    assert.equal(mgr.usable(pod("a")), undefined);
    assert.equal(mgr.wants(pod("a")), false);
    assert.equal(await mgr.take(pod("a", 1, "a-pod-2")), undefined);
    assert.equal(runtime.dumps, 1);
    assert.deepEqual([...Deno.readDirSync(`${dir}/t/n`)], [], "the half-written dump is gone");
  },
);

t(
  "a dump that fills the disk leaves nothing listed and is tried again later",
  async ({ meta, mgr, runtime, dir }) => {
    runtime.fail = new Error(
      "Cannot dump process 7: Error (criu/image.c:40): Can't write: No space left on device",
    );
    assert.match((await mgr.take(pod("a")))!, /disk filled up/);
    assert.deepEqual(await records(meta), []);
    assert.deepEqual([...Deno.readDirSync(`${dir}/t/n`)], []);
    assert.equal(mgr.wants(pod("a")), true);
    runtime.fail = undefined;
    assert.equal(await mgr.take(pod("a", 1, "a-pod-2")), undefined);
    assert.equal((await records(meta))[0].state, "Ready");
  },
);

// Nothing said against the worker: not recorded Failed, tried again at the next fresh start.
for (
  const [why, fail, said] of [
    [
      "runs out of time",
      new InferxError("timeout", "Cannot dump process 7: CRIU did not finish within 120000 ms"),
      /the dump timed out/,
    ],
    [
      "whose worker died meanwhile",
      new InferxError(
        "worker_failed",
        "Cannot snapshot pod a-pod: the worker exited while it was dumped",
      ),
      /the worker exited while it was dumped/,
    ],
    [
      "whose CRIU was killed from outside",
      new CriuKilled("Cannot dump process 7", "SIGKILL"),
      /No snapshot taken: Cannot dump process 7: CRIU was killed \(SIGKILL\) before it finished/,
    ],
  ] as const
) {
  t(
    `a dump that ${why} leaves nothing listed and is tried again later`,
    async ({ meta, mgr, runtime }) => {
      runtime.fail = fail;
      assert.match((await mgr.take(pod("a")))!, said);
      assert.deepEqual(await records(meta), [], "not recorded Failed");
      assert.equal(mgr.wants(pod("a")), true);
      runtime.fail = undefined;
      assert.equal(await mgr.take(pod("a", 1, "a-pod-2")), undefined);
      assert.equal((await records(meta))[0].state, "Ready");
    },
  );
}

t(
  "a version whose dumps a CRIU killed from outside cut short three times is recorded failed",
  async ({ meta, mgr, runtime }) => {
    runtime.fail = new CriuKilled("Cannot dump process 7", "SIGKILL");
    for (const n of [1, 2]) {
      assert.match((await mgr.take(pod("a", 1, `a-pod-${n}`)))!, /CRIU was killed/);
      assert.deepEqual(await records(meta), [], `try ${n}: not recorded`);
    }
    await mgr.take(pod("a", 1, "a-pod-3"));
    const [rec] = await records(meta);
    assert.equal(rec.state, "Failed");
    assert.match(
      rec.error!,
      /CRIU was killed \(SIGKILL\) before it finished \(3 times: not tried again\)/,
    );
    assert.equal(mgr.wants(pod("a", 1, "a-pod-4")), false);
  },
);

t(
  "a pod that would wait for another pod's dump takes no snapshot, and its version is taken at a later fresh start",
  async ({ meta, mgr, runtime }) => {
    let open!: () => void;
    runtime.gate = new Promise((r) => open = r);
    const a = mgr.take(pod("a")); // a large model's dump, minutes long
    assert.equal(mgr.dumping(), true);
    assert.equal(await mgr.take(pod("b")), BUSY, "b's pod does not wait for a's dump");
    assert.equal(mgr.wants(pod("b")), true);
    open();
    assert.equal(await a, undefined);
    assert.equal(runtime.dumps, 1, "b was not dumped");
    assert.equal(mgr.dumping(), false);
    assert.equal(await mgr.take(pod("b", 1, "b-pod-2")), undefined);
    assert.deepEqual((await records(meta)).map((r) => [r.func, r.state]).sort(), [
      ["a", "Ready"],
      ["b", "Ready"],
    ]);
  },
);

t(
  "images stay within the disk budget: the least recently used goes first",
  async ({ meta, mgr }) => {
    await mgr.take(pod("a"));
    await new Promise((r) => setTimeout(r, 5));
    await mgr.take(pod("b"));
    await new Promise((r) => setTimeout(r, 5));
    await mgr.used(mgr.usable(pod("a"))!); // a is now the more recently used
    await mgr.take(pod("c")); // 30 MB would not fit 25: b goes
    assert.ok(mgr.usable(pod("a")));
    assert.equal(mgr.usable(pod("b")), undefined);
    assert.ok(mgr.usable(pod("c")));
    assert.ok(mgr.usedBytes() <= 25 * MB);
    await eventually(async () => (await records(meta)).map((r) => r.func).sort().join() === "a,c");
    assert.equal((await records(meta)).find((r) => r.func === "a")!.restores, 1);
  },
);

t(
  "an image held for a restore is not removed under it: eviction passes it over, a new version waits",
  async ({ meta, mgr }) => {
    await mgr.take(pod("a"));
    await new Promise((r) => setTimeout(r, 5));
    await mgr.take(pod("b"));
    const restoring = mgr.hold(pod("a"))!; // a restore from a is under way
    await new Promise((r) => setTimeout(r, 5));
    await mgr.used(mgr.usable(pod("b"))!); // b is now the more recently used
    const exists = (d: string) => Deno.stat(d).then(() => true, () => false);
    await mgr.take(pod("c")); // 30 MB would not fit 25: not a (least recently used, held), but b
    assert.ok(await exists(restoring.dir), "the image being restored stays");
    assert.ok(mgr.usable(pod("a")));
    assert.equal(mgr.usable(pod("b")), undefined);
    // A new version forgets a at once, but its image goes only when the restore ends.
    await putFunction(meta, "a", "y");
    await eventually(() => Promise.resolve(mgr.usable(pod("a")) === undefined));
    assert.ok(await exists(restoring.dir));
    mgr.release(restoring);
    await eventually(async () => !await exists(restoring.dir));
  },
);

t(
  "a function made again under its name while its old image is restored is not dumped over it",
  async ({ meta, mgr }) => {
    const exists = (d: string) => Deno.stat(d).then(() => true, () => false);
    await mgr.take(pod("a"));
    const restoring = mgr.hold(pod("a"))!;
    await meta.delete({ type: "function", tenant: "t", namespace: "n", name: "a" });
    await eventually(() => Promise.resolve(mgr.usable(pod("a")) === undefined));
    await putFunction(meta, "a"); // version 1 again, its image under the same name
    await eventually(() => Promise.resolve(mgr.wants(pod("a"))));
    assert.match((await mgr.take(pod("a", 1, "a-pod-2")))!, /being restored/);
    assert.ok(await exists(restoring.dir), "the image read by the restore stays as it was");
    mgr.release(restoring);
    await eventually(async () => !await exists(restoring.dir));
    assert.equal(await mgr.take(pod("a", 1, "a-pod-3")), undefined);
    assert.ok(await exists(restoring.dir), "the new function's own image");
  },
);

t(
  "SnapshotManager: a worker whose memory exceeds the budget is not dumped, nor tried again under that budget",
  async ({ meta, mgr, runtime, open }) => {
    runtime.footprintMB = 30;
    assert.match(
      (await mgr.take(pod("a")))!,
      /its memory \(30 MB\) exceeds the snapshot disk budget/,
    );
    assert.equal(runtime.dumps, 0);
    const [failed] = await records(meta);
    assert.deepEqual([failed.state, failed.budgetMB], ["Failed", 25]);
    assert.equal(mgr.wants(pod("a")), false, "its next fresh start sends no sample query for it");
    mgr.stop();
    const raised = open(40);
    await raised.start();
    try {
      assert.equal(raised.wants(pod("a")), true);
      assert.equal(await raised.take(pod("a", 1, "a-pod-2")), undefined);
      assert.equal((await records(meta))[0].state, "Ready");
    } finally {
      raised.stop();
    }
  },
);

t(
  "SnapshotManager: an image larger than the budget is recorded Failed, and tried again under another budget",
  async ({ meta, mgr, runtime, open }) => {
    runtime.footprintMB = 1;
    runtime.sizeMB = 30;
    assert.match((await mgr.take(pod("a")))!, /its image \(30 MB\) exceeds/);
    const [failed] = await records(meta);
    assert.deepEqual([failed.state, failed.budgetMB], ["Failed", 25]);
    assert.equal(mgr.wants(pod("a")), false, "not dumped again under this budget");
    mgr.stop();
    const same = open();
    await same.start();
    assert.equal(same.wants(pod("a")), false, "nor after a restart with the same one");
    same.stop();
    const raised = open(40);
    await raised.start();
    try {
      assert.deepEqual(await records(meta), []);
      assert.equal(raised.wants(pod("a")), true);
      assert.equal(await raised.take(pod("a", 1, "a-pod-2")), undefined);
    } finally {
      raised.stop();
    }
  },
);

t(
  "SnapshotManager: a budget lowered since the last start is kept at start, the least recently used going",
  async ({ meta, mgr, open }) => {
    await mgr.take(pod("a"));
    await new Promise((r) => setTimeout(r, 5));
    await mgr.take(pod("b"));
    mgr.stop();
    const lowered = open(15);
    await lowered.start();
    try {
      assert.ok(lowered.usedBytes() <= 15 * MB);
      assert.equal(lowered.usable(pod("a")), undefined);
      assert.ok(lowered.usable(pod("b")));
      await eventually(async () => (await records(meta)).map((r) => r.func).join() === "b");
    } finally {
      lowered.stop();
    }
  },
);

t(
  "SnapshotManager.refuse() removes the image once its restore ends, and a restart keeps no folder for a failed record",
  async ({ meta, mgr, dir, open }) => {
    const exists = (d: string) => Deno.stat(d).then(() => true, () => false);
    await mgr.take(pod("a"));
    const restoring = mgr.hold(pod("a"))!;
    await mgr.refuse(restoring, pod("a"), "its restore hook failed");
    assert.equal((await records(meta))[0].state, "Failed");
    assert.ok(await exists(restoring.dir), "kept while its restore runs");
    mgr.release(restoring);
    await eventually(async () => !await exists(restoring.dir));
    // A folder left behind by a crash before the removal goes at the next start.
    mgr.stop();
    await Deno.mkdir(restoring.dir, { recursive: true });
    await Deno.writeTextFile(`${restoring.dir}/pages-1.img`, "x");
    const again = open();
    await again.start();
    try {
      assert.equal(await exists(restoring.dir), false);
      assert.equal(again.wants(pod("a")), false, "the version stays Failed");
      assert.deepEqual(Deno.readDirSync(dir).toArray(), []);
    } finally {
      again.stop();
    }
  },
);

t(
  "SnapshotManager: a new version or a delete of the function removes its snapshots",
  async ({ meta, mgr, dir }) => {
    await mgr.take(pod("a"));
    await mgr.take(pod("b"));
    await putFunction(meta, "a", "y"); // version 2
    await eventually(() => Promise.resolve(mgr.usable(pod("a")) === undefined));
    assert.equal(mgr.wants(pod("a", 1)), false, "an old version's pod is not snapshotted");
    assert.equal(mgr.wants(pod("a", 2)), true);
    await meta.delete({ type: "function", tenant: "t", namespace: "n", name: "b" });
    await eventually(() => Promise.resolve(mgr.usable(pod("b")) === undefined));
    await eventually(async () => (await records(meta)).length === 0);
    // Nothing left behind: the folders of its tenant and namespace go with the last image.
    await eventually(() => Promise.resolve(Deno.readDirSync(dir).toArray().length === 0));
  },
);

t(
  "SnapshotManager: a version a canary keeps serving keeps its snapshot until it serves no more",
  async ({ meta, mgr }) => {
    await mgr.take(pod("a"));
    await putFunction(meta, "a", "y", { Obj: { canary_percent: 10 } }); // version 2, 10%
    await eventually(() => Promise.resolve(mgr.wants(pod("a", 2))));
    assert.ok(mgr.usable(pod("a")), "the stable version's cold starts still restore");
    assert.equal(mgr.wants(pod("a", 1)), false, "it has one");
    await mgr.take(pod("a", 2, "a-pod-2"));
    assert.ok(mgr.usable(pod("a", 2)));
    // Promoted (the canary ends): version 1 serves no more.
    await putFunction(meta, "a", "y", { Obj: {} });
    await eventually(() => Promise.resolve(mgr.usable(pod("a")) === undefined));
    assert.ok(mgr.usable(pod("a", 2)), "the version that serves keeps its own");
    assert.deepEqual((await records(meta)).map((r) => r.funcVersion), [2]);
    // A traffic split that gives version 3 every call: 2, kept as the stable one, serves none.
    await putFunction(meta, "a", "z", { Obj: { traffic: [{ version: 3, percent: 100 }] } });
    await eventually(() => Promise.resolve(mgr.usable(pod("a", 2)) === undefined));
    assert.equal(mgr.wants(pod("a", 2)), false);
    assert.equal(mgr.wants(pod("a", 3)), true);
  },
);

t(
  "a restart keeps images with records and drops records without images and images without records",
  async ({ meta, mgr, open, dir }) => {
    await mgr.take(pod("a"));
    await mgr.take(pod("b"));
    mgr.stop();
    await Deno.remove(`${dir}/t/n/b.v1.n1`, { recursive: true }); // image lost
    await Deno.mkdir(`${dir}/t/n/c.v1.n1.partial-c-pod`, { recursive: true }); // a crash mid-dump
    const again = open();
    await again.start();
    try {
      assert.ok(again.usable(pod("a")));
      assert.equal(again.usable(pod("b")), undefined);
      assert.deepEqual((await records(meta)).map((r) => r.func), ["a"]);
      assert.deepEqual([...Deno.readDirSync(`${dir}/t/n`)].map((e) => e.name), ["a.v1.n1"]);
    } finally {
      again.stop();
    }
  },
);

t(
  "SnapshotManager.discard() removes a snapshot whose image failed to restore",
  async ({ meta, mgr }) => {
    await mgr.take(pod("a"));
    await mgr.discard(mgr.usable(pod("a"))!, "corrupt image");
    assert.equal(mgr.usable(pod("a")), undefined);
    assert.deepEqual(await records(meta), []);
    assert.equal(mgr.wants(pod("a")), true, "the next fresh start takes a new one");
  },
);

const criuCap = await criuCapability();
const netCap = criuCap.available
  ? await new PodNetworks({ prefix: "ixsnaptest" }).capability()
  : { available: false, reason: criuCap.reason };
if (!netCap.available) console.log(`skipping the real disk-full test: ${netCap.reason}`);

Deno.test({
  name: "SnapshotManager: a real dump onto a full disk keeps nothing and the worker serves on",
  ignore: !netCap.available,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const f = await fixture();
    const tiny = await Deno.makeTempDir();
    const work = await Deno.makeTempDir();
    const mount = (args: string[]) =>
      new Deno.Command(args[0], { args: args.slice(1) }).outputSync();
    assert.ok(mount(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", tiny]).success);
    const rt = new ProcessRuntime({
      criu: new Criu(locateCriu()!),
      podNetworks: new PodNetworks({ prefix: "ixsnaptest" }),
      snapshotDir: work,
    });
    const mgr = new SnapshotManager({
      meta: f.meta,
      node: "n1",
      dir: tiny,
      diskBudgetMB: 100,
      runtime: rt,
    });
    await mgr.start();
    const p = pod("a");
    p.template.commands = [
      "deno",
      "eval",
      `Deno.serve({ port: 80, hostname: Deno.env.get("HOST"), onListen() {} }, () => new Response("ok"))`,
    ];
    p.template.startupTimeoutS = 20;
    try {
      const running = await rt.start({
        ...p,
        podId: p.id,
        func: "t/n/a",
        template: p.template,
        gpus: [],
      });
      assert.match((await mgr.take(p))!, /disk filled up.*No space left on device/);
      assert.deepEqual(await records(f.meta), []);
      assert.deepEqual([...Deno.readDirSync(`${tiny}/t/n`)], [], "no half-written image");
      const res = await fetch(`http://${running.endpoint}/`);
      assert.equal(await res.text(), "ok");
    } finally {
      mgr.stop();
      await rt.stop(p.id);
      mount(["umount", tiny]);
      await Deno.remove(tiny, { recursive: true });
      await Deno.remove(work, { recursive: true });
      await f.dispose();
    }
  },
});

t(
  "take() never throws: a directory it cannot make leaves a note, and the pod runs on",
  async ({ dir, mgr, runtime }) => {
    // The tenant's directory is a file: making the image's directory fails (as a full or
    // read-only disk would).
    await Deno.writeTextFile(`${dir}/t`, "in the way");
    const note = await mgr.take(pod("a"));
    assert.match(note ?? "", /^No snapshot taken: /);
    assert.equal(runtime.dumps, 0);
  },
);

t(
  "a snapshot is restored only into pods of the worker it was taken from",
  async ({ mgr }) => {
    assert.equal(await mgr.take(pod("a")), undefined);
    assert.ok(mgr.usable(pod("a")), "the same template");
    // The function deleted and made again: version 1 again, another image.
    const again = { ...pod("a"), template: { ...pod("a").template, image: "y" } };
    assert.equal(mgr.usable(again), undefined);
    assert.equal(mgr.usable(pod("a")), undefined, "and the old image is gone");
  },
);

t(
  "snapshots of functions deleted while the agent was away go when it starts",
  async ({ meta, mgr, open }) => {
    assert.equal(await mgr.take(pod("b")), undefined);
    mgr.stop();
    await meta.delete({ type: "function", tenant: "t", namespace: "n", name: "b" });
    const next = open();
    await next.start();
    try {
      assert.equal(next.usable(pod("b")), undefined);
      await eventually(async () =>
        !(await records(meta)).some((r) => r.func === "b" && r.state === "Ready")
      );
    } finally {
      next.stop();
    }
  },
);

t(
  "a function deleted while its snapshot is dumped keeps neither the image nor a record",
  async ({ meta, mgr, runtime, dir }) => {
    const gate = Promise.withResolvers<void>();
    const dump = runtime.snapshot.bind(runtime);
    runtime.snapshot = async (id: string, d: string) => (await gate.promise, await dump(id, d));
    const taking = mgr.take(pod("a"));
    await meta.delete({ type: "function", tenant: "t", namespace: "n", name: "a" });
    await new Promise((r) => setTimeout(r, 100)); // the informer hears it
    gate.resolve();
    assert.match((await taking)!, /changed or was deleted while it was taken/);
    assert.deepEqual(await records(meta), []);
    assert.deepEqual([...Deno.readDirSync(`${dir}/t/n`)], []);
    assert.deepEqual(mgr.summary().items, []);
  },
);

t(
  "a restore that ends after its snapshot was dropped does not record it again",
  async ({ meta, mgr }) => {
    assert.equal(await mgr.take(pod("a")), undefined);
    const s = mgr.hold(pod("a"))!;
    await putFunction(meta, "a", "y"); // version 2 while the restore runs
    await eventually(async () => (await records(meta)).length === 0);
    await mgr.used(s);
    mgr.release(s);
    assert.deepEqual(await records(meta), []);
  },
);

t(
  "a use recorded while its function is deleted does not make the snapshot's record again",
  async ({ meta, runtime }) => {
    // The record's read for the use waits until the function's deletion removed the record.
    let gate: PromiseWithResolvers<void> | undefined;
    const slow = new Proxy(meta, {
      get(target, key) {
        const v = Reflect.get(target, key);
        if (key !== "get") return typeof v === "function" ? v.bind(target) : v;
        return async (ref: Parameters<MetaClient["get"]>[0]) => {
          if (ref.type === "snapshot" && gate) await gate.promise;
          return await target.get(ref);
        };
      },
    }) as MetaClient;
    const dir = await Deno.makeTempDir();
    const mgr = new SnapshotManager({ meta: slow, node: "n2", dir, diskBudgetMB: 25, runtime });
    await mgr.start();
    try {
      assert.equal(await mgr.take(pod("b")), undefined);
      assert.equal((await records(meta)).length, 1);
      const s = mgr.usable(pod("b"))!;
      gate = Promise.withResolvers();
      const using = mgr.used(s);
      await meta.delete({ type: "function", tenant: "t", namespace: "n", name: "b" });
      await eventually(async () => (await records(meta)).length === 0);
      gate.resolve();
      await using;
      await new Promise((r) => setTimeout(r, 100));
      assert.deepEqual(await records(meta), [], "no record of a deleted function's snapshot");
    } finally {
      mgr.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
);
