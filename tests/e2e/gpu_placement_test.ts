/**
 * GPU placement end to end without GPU hardware: the node declares two
 * 80 GB GPUs in `config/node.gpus.json`; functions with vRAM slices are
 * packed onto one GPU; a two-GPU function waits (and says why) until they
 * scale in, then gets both; every worker sees its devices and slice.
 */
import assert from "node:assert/strict";
import { createNamespace, type Json, putObject, request, startPlatform } from "./helpers.ts";

const ENV_WORKER =
  `Deno.serve({ port: Number(Deno.env.get("PORT")), hostname: Deno.env.get("HOST"), onListen() {} },
  () => Response.json(Deno.env.toObject()));`;

Deno.test({
  name:
    "All with declared GPUs packs vRAM slices onto one GPU, explains what does not fit, and hands workers their devices",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const p = await startPlatform({
      NODE_CONFIG: new URL("../../config/node.gpus.json", import.meta.url).pathname,
    });
    try {
      const put = (body: unknown) => putObject(p.url, body);
      await createNamespace(p.url, "gpu", "lab");
      const gpuFn = (name: string, count: number, vram: number) =>
        put({
          type: "function",
          tenant: "gpu",
          namespace: "lab",
          name,
          object: {
            spec: {
              image: "lab/env",
              commands: ["deno", "eval", ENV_WORKER],
              resources: { CPU: 100, Mem: 64, GPU: { Type: "H100", Count: count, vRam: vram } },
              policy: { Obj: { scalein_timeout: 1 } },
            },
          },
        });
      for (
        const [name, count, vram] of [["a", 1, 30000], ["b", 1, 30000], ["big", 2, 60000]] as const
      ) {
        const r = await gpuFn(name, count, vram);
        assert.equal(r.status, 201, JSON.stringify(r.body));
      }
      const env = async (name: string): Promise<Json> => {
        const r = await request(`${p.url}/funccall/gpu/lab/${name}/`);
        assert.equal(r.status, 200, JSON.stringify(r.body));
        return r.body;
      };
      const a = await env("a");
      const b = await env("b");
      assert.equal(a.CUDA_VISIBLE_DEVICES, b.CUDA_VISIBLE_DEVICES, "both slices share one GPU");
      assert.equal(a.INFERX_VRAM_MB, "30000");
      const blocked = await request(`${p.url}/funccall/gpu/lab/big/`, {
        headers: { "x-inferx-timeout": "0.5" },
      });
      assert.equal(blocked.status, 504, "a and b hold GPU 0 while leased");
      assert.match(blocked.body.error.message, /insufficient_vram/, JSON.stringify(blocked.body));
      // Once a and b go idle they are returned and scaled in; big then fits.
      const big = await env("big");
      assert.equal(big.CUDA_VISIBLE_DEVICES, "0,1");
      assert.equal(big.NVIDIA_VISIBLE_DEVICES, "0,1");
      assert.equal(big.INFERX_VRAM_MB, "60000");
      const [node] = (await request(`${p.url}/nodes`)).body;
      assert.equal(node.gpuDriver.available, false, "no CUDA driver on this machine");
      assert.match(node.gpuDriver.reason, /libcuda/);
      assert.equal(typeof node.criu.available, "boolean");
      if (!node.criu.available) assert.match(node.criu.reason, /criu/i);
      const pods = (await request(`${p.url}/pods/gpu/lab/big`)).body;
      assert.deepEqual(pods[0].gpus, [{ index: 0, vramMB: 60000 }, { index: 1, vramMB: 60000 }]);
    } finally {
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
    }
  },
});
