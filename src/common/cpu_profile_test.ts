import assert from "node:assert/strict";
import { startCpuProfile } from "./cpu_profile.ts";

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
