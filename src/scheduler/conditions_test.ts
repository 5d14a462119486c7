import assert from "node:assert/strict";
import { reset } from "@logtape/logtape";
import { InferxError } from "../common/errors.ts";
import { logLines } from "../common/testing.ts";
import type { MetaClient } from "../rpc/types.ts";
import { ConditionWriter } from "./conditions.ts";

Deno.test("ConditionWriter: a condition its function has no room for is said once, tried again only after a while", async () => {
  // A function's stored object near the largest an object may be: every write of it refused.
  let writes = 0;
  const stored = JSON.stringify({ version: 2, object: { spec: {} } });
  const meta = {
    get: () => Promise.resolve({ value: stored, revision: 7 }),
    update: () => {
      writes++;
      return Promise.reject(new InferxError("too_large", "function t/n/f is 1048826 bytes stored"));
    },
  } as unknown as MetaClient;
  let now = 1_000_000;
  const writer = new ConditionWriter(meta, { now: () => now });
  const lines = await logLines();
  try {
    const decision = {
      version: 2,
      condition: { status: "False", reason: "NoNodeFits", message: "no node has 9000000 MB" },
    } as const;
    writer.reconcile("t/n/f", decision, undefined);
    await writer.settled();
    assert.equal(writes, 1);
    // The scheduler's re-list every 10 s: not tried again, nor said again.
    for (let i = 0; i < 5; i++) {
      now += 10_000;
      writer.reconcile("t/n/f", decision, undefined);
      await writer.settled();
    }
    assert.equal(writes, 1);
    const said = lines.filter((l) => /Cannot record the Schedulable condition of t\/n\/f/.test(l));
    assert.equal(said.length, 1, lines.join("\n"));
    // After a while it is tried again (the object may have shrunk), said no more while it fails.
    now += 10 * 60_000;
    writer.reconcile("t/n/f", decision, undefined);
    await writer.settled();
    assert.equal(writes, 2);
    assert.equal(
      lines.filter((l) => /Cannot record the Schedulable condition/.test(l)).length,
      1,
    );
  } finally {
    await reset();
  }
});
