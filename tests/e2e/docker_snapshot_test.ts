/** The Docker runtime says on its node why it takes no snapshots. */
import assert from "node:assert/strict";
import { type Json, request, startPlatform } from "./helpers.ts";
import { dockerAvailable } from "../../src/nodeagent/docker_runtime.ts";

const docker = await dockerAvailable();
if (!docker) console.log("skipping the Docker snapshot report test: no Docker engine");

Deno.test({
  name: "A node on the Docker runtime reports that it takes no snapshots, and why",
  ignore: !docker,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const p = await startPlatform({ INFERX_RUNTIME: "docker" });
    try {
      const [node]: Json[] = (await request(`${p.url}/nodes`)).body;
      assert.equal(node.runtime, "docker");
      assert.equal(node.snapshots.available, false);
      assert.match(node.snapshots.reason, /^No snapshots on the Docker runtime: the Docker daemon/);
      assert.match(node.snapshots.reason, /checkpoint-dir is refused/);
      assert.deepEqual(node.snapshots.items, []);
    } finally {
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
    }
  },
});
