/**
 * The contract every `NodeAgentClient` implementation passes, in-process and
 * over gRPC, against a real node agent with the process runtime.
 *
 * @module
 */
import assert from "node:assert/strict";
import { fixtureTests, hasCode } from "../common/testing.ts";
import { decodePod, type PodInfo } from "../model/cluster.ts";
import type { MetaClient, NodeAgentClient } from "./types.ts";

/** A node agent named `n1` over `meta`, and how to dispose of it. */
export interface NodeAgentFixture {
  agent: NodeAgentClient;
  meta: MetaClient;
  dispose(): Promise<void>;
}

const WORKER = `console.log("weights loaded");
Deno.addSignalListener("SIGTERM", () => Deno.exit(0));
Deno.serve({ port: Number(Deno.env.get("PORT")), hostname: Deno.env.get("HOST"), onListen() {} }, () => new Response("ok"));`;

function pod(id: string, node = "n1"): PodInfo {
  return {
    id,
    tenant: "t",
    namespace: "n",
    func: "f",
    funcVersion: 1,
    node,
    cpuMillis: 100,
    memMB: 64,
    gpus: [],
    template: {
      image: "x",
      commands: ["deno", "eval", WORKER],
      envs: [],
      mounts: [],
      port: 8000,
      probe: "/",
      startupTimeoutS: 30,
    },
    desired: "Running",
    state: "Creating",
    createdAt: Date.now(),
  };
}

const code = hasCode;

async function until(what: string, check: () => Promise<boolean>) {
  const deadline = Date.now() + 15_000;
  while (!(await check())) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Registers the cases as Deno tests named `${name}: ...`. */
export function nodeAgentContract(name: string, open: () => Promise<NodeAgentFixture>): void {
  const t = fixtureTests(name, open);

  t(
    "createFuncPod() starts a pod, readPodLog() shows its output, terminatePod() removes it",
    async ({ agent, meta }) => {
      const p = pod("pod-a");
      const ref = { type: "pod" as const, tenant: "t", namespace: "n", name: p.id };
      await meta.create({ ...ref, object: p });
      await agent.createFuncPod(p);
      await until(
        "the pod ready",
        async () => decodePod((await meta.get(ref))!.value).state === "Ready",
      );
      await until(
        "its output",
        async () => (await agent.readPodLog(p.id)).includes("weights loaded"),
      );
      await agent.terminatePod(p.id);
      await until("the record removed", async () => (await meta.get(ref)) === undefined);
      await assert.rejects(agent.readPodLog(p.id), code("not_found"));
    },
  );

  t("calls about pods it does not run are refused clearly", async ({ agent }) => {
    await assert.rejects(agent.terminatePod("nope"), code("not_found"));
    await assert.rejects(agent.readPodLog("nope"), code("not_found"));
    await assert.rejects(agent.createFuncPod(pod("pod-b", "n9")), code("invalid"));
  });

  t("standby calls say the node has no standby tier", async ({ agent }) => {
    await assert.rejects(agent.resumePod("pod-a"), code("unsupported"));
    await assert.rejects(agent.removeSnapshot("pod-a"), code("unsupported"));
  });
}
