/**
 * `All` on the Docker runtime end to end: cold start in a container, the
 * paused tier, and adoption after the platform is killed with SIGKILL (the
 * container keeps serving and the restarted agent takes it over).
 */
import assert from "node:assert/strict";
import { dockerAvailable } from "../../src/nodeagent/docker_runtime.ts";
import { imageExists, NGRAM_COMMANDS, NGRAM_IMAGE } from "../../src/samples/ngram/image.ts";
import {
  createNamespace,
  eventually,
  type Json,
  putObject,
  request,
  startPlatform,
} from "./helpers.ts";

const reason = !(await dockerAvailable())
  ? "no Docker engine answers on /var/run/docker.sock"
  : !(await imageExists(NGRAM_IMAGE))
  ? `image ${NGRAM_IMAGE} is missing (deno task image builds it)`
  : undefined;
if (reason) console.log(`skipping the Docker end-to-end test: ${reason}`);

Deno.test({
  name: "All on Docker: cold start in a container, paused tier, adoption after SIGKILL",
  ignore: reason !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    let p = await startPlatform({ INFERX_RUNTIME: "docker" });
    try {
      const put = (body: unknown) => putObject(p.url, body);
      await createNamespace(p.url, "d", "n");
      const r = await put({
        type: "function",
        tenant: "d",
        namespace: "n",
        name: "lm",
        object: {
          spec: {
            image: NGRAM_IMAGE,
            commands: NGRAM_COMMANDS,
            endpoint: { port: 8000, probe: "/health" },
            resources: { CPU: 500, Mem: 256 },
            policy: { Obj: { scalein_timeout: 0.5, standby_per_node: 1 } },
          },
        },
      });
      assert.equal(r.status, 201, JSON.stringify(r.body));
      const call = () =>
        request(`${p.url}/funccall/d/n/lm/v1/completions`, {
          body: { prompt: "The GPU", max_tokens: 4 },
        });
      const cold = await call();
      assert.equal(cold.status, 200, JSON.stringify(cold.body));
      assert.equal(cold.headers.get("x-inferx-cold-start"), "1");
      const nodes = (await request(`${p.url}/nodes`)).body as Json[];
      assert.equal(nodes[0].runtime, "docker");
      assert.deepEqual(nodes[0].standbyTiers, ["paused"]);
      await eventually(
        "parked",
        async () => (await request(`${p.url}/pods/d/n/lm`)).body[0]?.state === "Standby",
      );
      const resumed = await call();
      assert.equal(resumed.headers.get("x-inferx-resumed"), "1");
      assert.equal(resumed.headers.get("x-worker-requests"), "2");
      const pod = (await request(`${p.url}/pods/d/n/lm`)).body[0];

      p.proc.kill("SIGKILL");
      await p.stop().catch(() => {});
      const direct = await fetch(`http://${pod.endpoint}/health`);
      assert.equal(direct.status, 200, "the container outlived the platform");
      await direct.body?.cancel();
      p = await startPlatform({ INFERX_RUNTIME: "docker" }, p.dataDir);
      const after = await call();
      assert.equal(after.status, 200);
      assert.equal(
        after.headers.get("x-inferx-pod"),
        pod.id,
        "the restarted agent adopted the container",
      );
      assert.equal(after.headers.get("x-inferx-cold-start"), "0");
      assert.equal(after.headers.get("x-worker-requests"), "3");
    } finally {
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
    }
  },
});
