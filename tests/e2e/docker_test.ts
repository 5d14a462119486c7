/**
 * `All` on the Docker runtime end to end: cold start in a container, the
 * paused tier, and adoption after the platform is killed with SIGKILL (the
 * container keeps serving and the restarted agent takes it over).
 */
import assert from "node:assert/strict";
import { dockerAvailable } from "../../src/nodeagent/docker_runtime.ts";
import { criuCapability } from "../../src/nodeagent/criu.ts";
import { imageExists, NGRAM_COMMANDS, NGRAM_IMAGE } from "../../src/samples/ngram/image.ts";
import {
  createNamespace,
  eventually,
  type Json,
  type Platform,
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

/** Function d/n/lm, the n-gram sample, under `policy`. */
async function putLm(p: Platform, policy: Record<string, unknown>): Promise<void> {
  await createNamespace(p.url, "d", "n");
  const r = await putObject(p.url, {
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
        policy: { Obj: policy },
      },
    },
  });
  assert.equal(r.status, 201, JSON.stringify(r.body));
}

/** The pod of d/n/lm once it is ready. */
async function readyPod(p: Platform): Promise<Json> {
  let pod: Json | undefined;
  await eventually("a worker", async () => {
    [pod] = (await request(`${p.url}/pods/d/n/lm`)).body as Json[];
    return pod?.state === "Ready";
  });
  return pod!;
}

Deno.test({
  name: "All on Docker: cold start in a container, paused tier, adoption after SIGKILL",
  ignore: reason !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    let p = await startPlatform({ INFERX_RUNTIME: "docker" });
    try {
      await putLm(p, { scalein_timeout: 0.5, standby_per_node: 1 });
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

Deno.test({
  name:
    "a restart that chooses Docker ends the workers a run on the process runtime left, and their files",
  ignore: reason !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    let p = await startPlatform({ INFERX_RUNTIME: "process", INFERX_POD_NETNS: "off" });
    try {
      await putLm(p, { min_replica: 1 });
      const pod = await readyPod(p);
      // Workers write their output to files only with CRIU (without it, to pipes): the files are
      // looked for where they are made.
      const withFiles = (await criuCapability()).available;
      const logs = `${p.dataDir}/snapshots`;
      const outputs = () =>
        [...Deno.readDirSync(logs)].filter((e) => e.name.endsWith(".log")).map((e) => e.name);
      if (withFiles) assert.ok(outputs().length > 0, "the worker's output file");
      p.proc.kill("SIGKILL");
      await p.stop().catch(() => {});
      const alive = () =>
        fetch(`http://${pod.endpoint}/health`).then((x) => (x.body?.cancel(), true), () => false);
      assert.ok(await alive(), "the worker outlived the platform");
      p = await startPlatform({ INFERX_RUNTIME: "docker" }, p.dataDir);
      assert.equal(await alive(), false, "ended by the start on Docker");
      if (withFiles) assert.deepEqual(outputs(), []);
      assert.match(p.output(), /an earlier run on the process runtime left ended/);
    } finally {
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
    }
  },
});

Deno.test({
  name: "a restart that chooses the process runtime removes the containers a run on Docker left",
  ignore: reason !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    let p = await startPlatform({ INFERX_RUNTIME: "docker" });
    try {
      await putLm(p, { min_replica: 1 });
      const pod = await readyPod(p);
      const containers = async () => {
        const out = await new Deno.Command("docker", {
          args: ["ps", "-aq", "--filter", `label=inferx.pod=${pod.id}`],
        }).output();
        return new TextDecoder().decode(out.stdout).trim();
      };
      assert.notEqual(await containers(), "", "the pod's container");
      p.proc.kill("SIGKILL");
      await p.stop().catch(() => {});
      p = await startPlatform({ INFERX_RUNTIME: "process", INFERX_POD_NETNS: "off" }, p.dataDir);
      assert.equal(await containers(), "", "removed by the start on processes");
      assert.match(p.output(), /1 container\(s\) an earlier run on Docker left removed/);
    } finally {
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
    }
  },
});
