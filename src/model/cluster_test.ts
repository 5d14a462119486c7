import assert from "node:assert/strict";
import { decodeNode, NODE_NAME_RE, plainText, splitOutput, withOutput } from "./cluster.ts";

Deno.test("withOutput() joins a reason and a worker's last output, its terminal escapes taken out", () => {
  const colored =
    "\x1b[0m\x1b[1m\x1b[31merror\x1b[0m: Module not found \x1b]8;;file:///x\x07x\x1b]8;;\x07";
  const reason = withOutput("exit code 1", `${colored}\n\x1b[2Kdone\x1b(B`);
  assert.equal(reason, "exit code 1; last output:\nerror: Module not found x\ndone");
  assert.deepEqual(splitOutput(reason), {
    text: "exit code 1",
    output: "error: Module not found x\ndone",
  });
  assert.equal(plainText("plain [31m text"), "plain [31m text");
});

Deno.test("a node an earlier release registered under a name now refused at writes still reads", () => {
  const stored = {
    name: "rack1:node1",
    address: "127.0.0.1",
    cpuMillis: 1000,
    memMB: 1024,
    gpus: [],
    standbyTiers: [],
    runtime: "process",
    ready: true,
    heartbeat: 0,
  };
  assert.equal(NODE_NAME_RE.test(stored.name), false);
  assert.equal(decodeNode(JSON.stringify(stored)).name, "rack1:node1");
});
