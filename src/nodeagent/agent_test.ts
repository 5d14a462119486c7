import assert from "node:assert/strict";
import { ConflictError, InferxError } from "../common/errors.ts";
import type { NodeInfo } from "../model/cluster.ts";
import type { MetaClient, MetaRecord, ObjectInput } from "../rpc/types.ts";
import { NodeAgent } from "./agent.ts";
import type { PodRuntime } from "./runtime.ts";

const node: NodeInfo = {
  name: "n1",
  address: "127.0.0.1",
  cpuMillis: 1000,
  memMB: 1024,
  gpus: [],
  contextOverheadMB: 0,
  standbyTiers: [],
  runtime: "fake",
  ready: true,
  heartbeat: 0,
};

const runtime: PodRuntime = {
  name: "fake",
  standbyTiers: [],
  park: () => Promise.resolve(),
  resume: () => Promise.resolve(),
  start: () => Promise.reject(new Error("not used")),
  stop: () => Promise.resolve(),
  logs: () => Promise.resolve(""),
  recover: () => Promise.resolve({ adopted: [], removed: 0 }),
};

/** A store holding the node's record, whose updates fail with `failures` in turn. */
function nodeStore(failures: Error[]) {
  let record: MetaRecord = {
    type: "node",
    tenant: "system",
    namespace: "system",
    name: "n1",
    revision: 1,
    value: JSON.stringify(node),
  };
  const updates: ObjectInput[] = [];
  const meta = {
    get: () => Promise.resolve(record),
    update(input: ObjectInput) {
      updates.push(input);
      const fail = failures.shift();
      if (fail) return Promise.reject(fail);
      record = { ...record, revision: record.revision + 1, value: JSON.stringify(input.object) };
      return Promise.resolve(record);
    },
  } as unknown as MetaClient;
  return { meta, updates, record: () => record };
}

Deno.test("NodeAgent reports a node write that lost every race as failed, not as written", async () => {
  const conflicts = Array.from({ length: 20 }, () => new ConflictError("moved"));
  const { meta, record } = nodeStore(conflicts);
  const agent = new NodeAgent(meta, runtime, node);
  await assert.rejects(agent.setAgentAddr("127.0.0.1:1233"), (e) => e instanceof ConflictError);
  assert.equal(record().revision, 1, "nothing was written");
});

Deno.test("NodeAgent does not retry a node write that failed for another reason than a conflict", async () => {
  const down = new InferxError("unavailable", "Cannot reach the state service");
  const { meta, updates, record } = nodeStore([down]);
  const agent = new NodeAgent(meta, runtime, node);
  await assert.rejects(agent.setAgentAddr("127.0.0.1:1233"), (e) => e === down);
  assert.equal(updates.length, 1);
  assert.equal(record().revision, 1);
});

Deno.test("NodeAgent writes its node again after a conflict", async () => {
  const { meta, updates, record } = nodeStore([new ConflictError("moved")]);
  const agent = new NodeAgent(meta, runtime, node);
  await agent.setAgentAddr("127.0.0.1:1233");
  assert.equal(updates.length, 2);
  assert.equal(JSON.parse(record().value).agentAddr, "127.0.0.1:1233");
});
