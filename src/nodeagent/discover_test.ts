import assert from "node:assert/strict";
import { buildFakeLibCuda, fakeLibCudaUnavailable } from "../ffi/testing.ts";
import type { NodeInfo } from "../model/cluster.ts";
import { discover, DRIVER_CONTEXT_MIN_MB, gpuType, hugePageMode } from "./discover.ts";

const node: NodeInfo = {
  name: "n1",
  address: "127.0.0.1",
  cpuMillis: 1000,
  memMB: 1024,
  gpus: [{ index: 0, type: "Declared", vramMB: 1000 }],
  contextOverheadMB: 0,
  standbyTiers: [],
  runtime: "process",
  ready: true,
  heartbeat: 0,
};

Deno.test("gpuType() shortens the driver's device names", () => {
  const cases: [string, string][] = [
    ["NVIDIA H100 80GB HBM3", "H100"],
    ["NVIDIA A100-SXM4-40GB", "A100"],
    ["NVIDIA L40S", "L40S"],
    ["Tesla T4", "T4"],
    ["Some Future GPU", "Some Future GPU"],
  ];
  for (const [name, want] of cases) assert.equal(gpuType(name), want);
});

Deno.test("hugePageMode() reads the bracketed mode, and nothing from a file it cannot read", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (
      const [text, want] of [
        ["always [madvise] never\n", "madvise"],
        ["[always] madvise never\n", "always"],
        ["always madvise [never]\n", "never"],
        ["always madvise never\n", undefined],
      ]
    ) {
      await Deno.writeTextFile(`${dir}/enabled`, text!);
      assert.equal(hugePageMode(`${dir}/enabled`), want, text);
    }
    assert.equal(hugePageMode(`${dir}/missing`), undefined);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "discover() takes GPUs from the CUDA driver and says whether its checkpoint API is there",
  ignore: fakeLibCudaUnavailable() !== undefined,
  async fn() {
    const lib = await buildFakeLibCuda();
    Deno.env.set("INFERX_LIBCUDA", lib);
    try {
      const found = await discover(node);
      assert.deepEqual(found.gpus.map((g) => [g.index, g.type, g.vramMB]), [[0, "H100", 81559], [
        1,
        "H100",
        81559,
      ]]);
      assert.deepEqual(found.gpuDriver, {
        available: true,
        driverVersion: 12080,
        checkpointApi: true,
      });
      assert.equal(typeof found.criu?.available, "boolean");
      // A CUDA context costs vRAM on a real GPU: a slice of the whole GPU must not fit.
      assert.equal(found.contextOverheadMB, DRIVER_CONTEXT_MIN_MB);
      const more = await discover({ ...node, contextOverheadMB: 3000 });
      assert.equal(more.contextOverheadMB, 3000, "a larger charge from node.json stays");
    } finally {
      Deno.env.delete("INFERX_LIBCUDA");
    }
  },
});

Deno.test("discover() keeps the GPUs node.json declares when there is no driver, and says why", async () => {
  Deno.env.set("INFERX_LIBCUDA", "/nonexistent/libcuda.so.1");
  try {
    const found = await discover(node);
    assert.deepEqual(found.gpus, node.gpus);
    assert.equal(found.contextOverheadMB, 0, "declared GPUs are charged what node.json says");
    assert.equal(found.gpuDriver?.available, false);
    assert.match(found.gpuDriver!.reason!, /Cannot load \/nonexistent\/libcuda\.so\.1/);
  } finally {
    Deno.env.delete("INFERX_LIBCUDA");
  }
});
