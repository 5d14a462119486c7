import assert from "node:assert/strict";
import { InferxError } from "../common/errors.ts";
import { JsonProbe, OFF_THREAD_BYTES, probeJson } from "./json_probe.ts";

const enc = (s: string) => new TextEncoder().encode(s);

Deno.test("probeJson keeps a call's top-level fields that are strings, numbers or booleans, and says why not", () => {
  assert.deepEqual(
    probeJson(
      enc('{"model":"t/n/f","max_tokens":5,"prompt":"x","max_completion_tokens":{},"stream":true}'),
    ),
    { ok: true, fields: { model: "t/n/f", max_tokens: 5, stream: true } },
  );
  assert.deepEqual(probeJson(enc('[{"model":"f"}]')), { ok: true, fields: {} });
  const bad = probeJson(enc("{oops"));
  assert.equal(bad.ok, false);
  assert.match((bad as { invalid: string }).invalid, /JSON/);
  assert.deepEqual(probeJson(enc("[" + "[],".repeat(100_000) + "[]]")), {
    ok: false,
    heavy: "holds more than 100000 arrays, objects and object members",
  });
});

Deno.test({
  name: "JsonProbe reads a large body in its thread while the event loop goes on",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const probe = new JsonProbe();
    try {
      // 16 MiB of numbers: some hundreds of milliseconds of JSON.parse.
      const numbers = enc(`{"model":"m","max_tokens":7,"input":[${"1,".repeat(8 << 20)}1]}`);
      assert.ok(numbers.byteLength > OFF_THREAD_BYTES);
      const read = probe.probe(numbers);
      let answered = false;
      read.then(() => answered = true);
      // A turn of the loop (a timer) comes while the worker still parses: it did not block it.
      await new Promise((r) => setTimeout(r, 0));
      assert.equal(answered, false);
      assert.equal(probe.pending, 1);
      assert.deepEqual(await read, { ok: true, fields: { model: "m", max_tokens: 7 } });
      assert.equal(probe.pending, 0);
      const invalid = await probe.probe(enc(`{"model":"m",${" ".repeat(OFF_THREAD_BYTES)}`));
      assert.equal(invalid.ok, false);
      // Bodies waiting when the gateway stops are refused, as calls that went to no worker.
      const waiting = probe.probe(numbers);
      probe.close();
      const err = await waiting.then(() => assert.fail("answered"), (e) => e);
      assert.ok(err instanceof InferxError);
      assert.equal(err.code, "unavailable");
      await assert.rejects(probe.probe(numbers), /stopping/);
    } finally {
      probe.close();
    }
  },
});
