import assert from "node:assert/strict";
import { plainText, splitOutput, withOutput } from "./cluster.ts";

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
