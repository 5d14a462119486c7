import assert from "node:assert/strict";
import { startCpuProfile, startHeapProfile } from "./profile.ts";

Deno.test("startCpuProfile() writes a profile that names the functions that ran", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const stop = await startCpuProfile(`${dir}/p.cpuprofile`, 50);
    let x = 0;
    const busyWithSquareRoots = () => {
      for (let i = 0; i < 3e6; i++) x += Math.sqrt(i);
    };
    const t = performance.now();
    while (performance.now() - t < 100) busyWithSquareRoots();
    await stop();
    const p = JSON.parse(await Deno.readTextFile(`${dir}/p.cpuprofile`)) as {
      nodes: { callFrame: { functionName: string } }[];
      samples: number[];
      timeDeltas: number[];
    };
    assert.ok(x > 0);
    assert.ok(p.samples.length > 10 && p.samples.length === p.timeDeltas.length);
    assert.ok(p.nodes.some((n) => n.callFrame.functionName === "busyWithSquareRoots"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("startHeapProfile() writes a profile that names the functions that allocated", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const stop = await startHeapProfile(`${dir}/p.heapprofile`, 256);
    const kept: number[][] = [];
    const allocateArrays = () => {
      for (let i = 0; i < 20_000; i++) kept[i % 100] = new Array(16).fill(i);
    };
    allocateArrays();
    await stop();
    interface Node {
      callFrame: { functionName: string };
      selfSize: number;
      children: Node[];
    }
    const p = JSON.parse(await Deno.readTextFile(`${dir}/p.heapprofile`)) as { head: Node };
    const sizeOf = (n: Node, name: string): number =>
      (n.callFrame.functionName === name ? n.selfSize : 0) +
      n.children.reduce((s, c) => s + sizeOf(c, name), 0);
    assert.ok(kept.length === 100);
    // 20,000 arrays of 16 elements: megabytes, most of them collected since.
    assert.ok(sizeOf(p.head, "allocateArrays") > 1_000_000, `${sizeOf(p.head, "allocateArrays")}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a profile whose file cannot be written fails at its start, not at its stop", async () => {
  await assert.rejects(startCpuProfile("/nonexistent-dir/cpu.cpuprofile"), Deno.errors.NotFound);
  await assert.rejects(startHeapProfile("/nonexistent-dir/heap.heapprofile"), Deno.errors.NotFound);
});
