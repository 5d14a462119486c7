/**
 * The contract every `NodeAgentClient` implementation passes, in-process and
 * over gRPC, against a real node agent with the process runtime.
 *
 * @module
 */
import assert from "node:assert/strict";
import { fixtureTests, hasCode, testPod, until } from "../common/testing.ts";
import { decodePod } from "../model/cluster.ts";
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

const pod = (id: string, node = "n1") => testPod(id, node, ["deno", "eval", WORKER]);

const code = hasCode;

/** Registers the cases as Deno tests named `${name}: ...`. */
export function nodeAgentContract(name: string, open: () => Promise<NodeAgentFixture>): void {
  const t = fixtureTests(name, open);

  t(
    "readPodLog() shows the output of a pod the agent started from its record",
    async ({ agent, meta }) => {
      const p = pod("pod-a");
      const ref = { type: "pod" as const, tenant: "t", namespace: "n", name: p.id };
      await meta.create({ ...ref, object: p });
      await until(
        "the pod ready",
        async () => decodePod((await meta.get(ref))!.value).state === "Ready",
      );
      await until(
        "its output",
        async () => (await agent.readPodLog(p.id)).includes("weights loaded"),
      );
      const cur = (await meta.get(ref))!;
      await meta.update({
        ...ref,
        object: { ...decodePod(cur.value), desired: "Terminated" },
        revision: cur.revision,
      });
      await until("the record removed", async () => (await meta.get(ref)) === undefined);
      await assert.rejects(agent.readPodLog(p.id), code("not_found"));
    },
  );

  t("readPodLog() refuses a pod the node does not run", async ({ agent, meta }) => {
    await assert.rejects(agent.readPodLog("nope"), code("not_found"));
    // Placed on another node: this agent leaves it alone.
    const other = pod("pod-b", "n9");
    await meta.create({ type: "pod", tenant: "t", namespace: "n", name: other.id, object: other });
    await new Promise((r) => setTimeout(r, 100));
    await assert.rejects(agent.readPodLog(other.id), code("not_found"));
  });
}
