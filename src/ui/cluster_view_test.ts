import assert from "node:assert/strict";
import type { NodeInfo, PodInfo } from "../model/cluster.ts";
import { age, funcColor, holds, mb, nodeViews, percent, stateCounts } from "./cluster_view.ts";

const node = (name: string, gpus = 2): NodeInfo => ({
  name,
  address: "127.0.0.1",
  cpuMillis: 4000,
  memMB: 8192,
  gpus: Array.from({ length: gpus }, (_, index) => ({ index, type: "H100", vramMB: 81920 })),
  contextOverheadMB: 512,
  standbyTiers: ["paused"],
  runtime: "process",
  ready: true,
  heartbeat: 0,
});

let seq = 0;
const pod = (func: string, fields: Partial<PodInfo> = {}): PodInfo => ({
  id: `p-${++seq}`,
  tenant: "t",
  namespace: "n",
  func,
  funcVersion: 1,
  node: "n1",
  cpuMillis: 500,
  memMB: 1024,
  gpus: [{ index: 0, vramMB: 30000 }],
  template: {
    image: "x",
    commands: [],
    envs: [],
    mounts: [],
    port: 80,
    probe: "/",
    startupTimeoutS: 1,
  },
  desired: "Running",
  state: "Ready",
  createdAt: seq,
  ...fields,
});

Deno.test("holds() follows the scheduler: parked pods keep less the deeper their tier", () => {
  const cases: [Partial<PodInfo>, string][] = [
    [{ state: "Ready" }, "cpu mem vram"],
    [{ state: "Creating" }, "cpu mem vram"],
    [{ state: "Resuming", standbyTier: "host_memory" }, "cpu mem vram"],
    [{ state: "Standby", standbyTier: "paused" }, "mem vram"],
    [{ state: "Standby", standbyTier: "host_memory" }, "mem"],
    [{ state: "Standby", standbyTier: "file" }, ""],
    [{ state: "Failed" }, ""],
    [{ state: "Terminated" }, ""],
  ];
  for (const [p, want] of cases) {
    const h = holds({ state: p.state!, standbyTier: p.standbyTier });
    const got = (["cpu", "mem", "vram"] as const).filter((k) => h[k]).join(" ");
    assert.equal(got, want, JSON.stringify(p));
  }
});

Deno.test("nodeViews() splits a GPU into the slices of two functions, context overhead included", () => {
  const [v] = nodeViews([node("n1")], [pod("a"), pod("b"), pod("c", { node: "elsewhere" })]);
  assert.deepEqual(v.gpus[0].slices.map((s) => s.func), ["t/n/a", "t/n/b"]);
  assert.equal(v.gpus[0].usedMB, 2 * (30000 + 512));
  assert.deepEqual(v.gpus[1].slices, []);
  assert.deepEqual(v.cpu, { used: 1000, total: 4000 });
  assert.deepEqual(v.mem, { used: 2048, total: 8192 });
  assert.equal(v.pods, 2);
});

Deno.test("nodeViews() keeps a paused pod on its GPU and shows pods parked off the GPU apart", () => {
  const paused = pod("a", { state: "Standby", standbyTier: "paused" });
  const inHost = pod("b", { state: "Standby", standbyTier: "host_memory" });
  const gone = pod("c", { state: "Terminated" });
  const [v] = nodeViews([node("n1")], [paused, inHost, gone]);
  assert.deepEqual(v.gpus[0].slices.map((s) => [s.pod, s.state]), [[paused.id, "Standby"]]);
  assert.deepEqual(v.parked.map((p) => [p.pod, p.tier, p.vramMB]), [
    [inHost.id, "host_memory", 30000],
  ]);
  assert.deepEqual(v.cpu.used, 0, "parked pods give their CPU back");
  assert.deepEqual(v.mem.used, 2048, "paused and host-memory pods keep host memory");
});

Deno.test("nodeViews() sorts nodes by name and draws a node without GPUs without bars", () => {
  const views = nodeViews([node("z", 0), node("a", 1)], []);
  assert.deepEqual(views.map((v) => [v.node.name, v.gpus.length]), [["a", 1], ["z", 0]]);
});

Deno.test("funcColor() gives a function the same color every time, and others mostly another", () => {
  assert.equal(funcColor("t/n/a"), funcColor("t/n/a"));
  assert.match(funcColor("t/n/a"), /^hsl\(\d+ 62% (40|52)%\)$/);
  const colors = new Set(["a", "b", "c", "d", "e", "f"].map((f) => funcColor(`t/n/${f}`)));
  assert.ok(colors.size >= 4, `only ${colors.size} colors for 6 functions`);
});

Deno.test("the formatters read as people write sizes, durations and shares", () => {
  assert.equal(percent(1, 4), "25%");
  assert.equal(percent(5, 4), "100%");
  assert.equal(percent(1, 0), "0%");
  assert.equal(percent(1, 3), "33.333%");
  assert.deepEqual([500, 61_000, 7_200_000, 2 * 86_400_000].map(age), ["0s", "1m", "2h", "2d"]);
  assert.deepEqual([512, 1536, 30000, 81920].map(mb), ["512 MB", "1.5 GB", "29.3 GB", "80 GB"]);
  assert.equal(
    stateCounts([{ state: "Standby" }, { state: "Ready" }, { state: "Ready" }]),
    "2 Ready, 1 Standby",
  );
});
