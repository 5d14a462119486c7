import assert from "node:assert/strict";
import { ConflictError, InferxError } from "./errors.ts";
import { cappedBackoff, retryOnConflict, updateWithRetry } from "./retry.ts";
import type { MetaClient, MetaRecord, ObjectInput, ObjectRef } from "../rpc/types.ts";

const ref: ObjectRef = { type: "node", tenant: "system", namespace: "system", name: "n1" };

/** A one-object store whose writes fail as `failures` says, first to last. */
function fakeMeta(initial: unknown | undefined, failures: Error[] = []) {
  let record: MetaRecord | undefined = initial === undefined
    ? undefined
    : { ...ref, revision: 1, value: JSON.stringify(initial) };
  const writes: ObjectInput[] = [];
  const write = (input: ObjectInput): Promise<MetaRecord> => {
    writes.push(input);
    const fail = failures.shift();
    if (fail) {
      // Another writer got there first: the revision moves.
      if (record && fail instanceof ConflictError) {
        record = { ...record, revision: record.revision + 1 };
      }
      return Promise.reject(fail);
    }
    record = { ...ref, revision: (record?.revision ?? 0) + 1, value: JSON.stringify(input.object) };
    return Promise.resolve(record);
  };
  const meta = {
    get: () => Promise.resolve(record),
    create: write,
    update: write,
  } as unknown as MetaClient;
  return { meta, writes, current: () => record };
}

const noSleep = { sleep: () => Promise.resolve() };

Deno.test("updateWithRetry() writes again from a fresh read after a conflict", async () => {
  const { meta, writes } = fakeMeta({ n: 1 }, [new ConflictError("moved")]);
  const seen: number[] = [];
  const rec = await updateWithRetry(meta, ref, (cur) => {
    seen.push(cur!.revision);
    return { n: 2 };
  }, noSleep);
  assert.deepEqual(seen, [1, 2], "the second try read the revision the other writer made");
  assert.deepEqual(writes.map((w) => w.revision), [1, 2]);
  assert.equal(rec?.revision, 3);
});

Deno.test("updateWithRetry() creates a missing object and writes nothing when mutate says so", async () => {
  const { meta, writes, current } = fakeMeta(undefined);
  await updateWithRetry(meta, ref, (cur) => cur ? undefined : { n: 1 }, noSleep);
  assert.equal(writes.length, 1);
  assert.equal(writes[0].revision, undefined, "a create");
  assert.equal(await updateWithRetry(meta, ref, () => undefined), undefined);
  assert.equal(writes.length, 1);
  assert.equal(current()!.value, '{"n":1}');
});

Deno.test("updateWithRetry() rethrows anything but a conflict at once", async () => {
  const down = new InferxError("unavailable", "Cannot reach the state service");
  const { meta, writes } = fakeMeta({ n: 1 }, [down]);
  await assert.rejects(updateWithRetry(meta, ref, () => ({ n: 2 }), noSleep), (e) => e === down);
  assert.equal(writes.length, 1);
});

Deno.test("updateWithRetry() throws the last conflict when every try conflicts", async () => {
  const conflicts = Array.from({ length: 3 }, (_, i) => new ConflictError(`moved ${i}`));
  const { meta, writes } = fakeMeta({ n: 1 }, [...conflicts]);
  await assert.rejects(
    updateWithRetry(meta, ref, () => ({ n: 2 }), { ...noSleep, attempts: 3 }),
    (e) => e === conflicts[2],
  );
  assert.equal(writes.length, 3);
});

Deno.test("retryOnConflict() retries a conflict that crossed gRPC, with doubling pauses up to the cap", async () => {
  const pauses: number[] = [];
  let calls = 0;
  const result = await retryOnConflict(() => {
    // Over gRPC a conflict arrives as a plain InferxError carrying the code.
    if (++calls < 6) return Promise.reject(new InferxError("conflict", "moved"));
    return Promise.resolve("done");
  }, { delayMs: 10, maxDelayMs: 40, sleep: (ms) => (pauses.push(ms), Promise.resolve()) });
  assert.equal(result, "done");
  assert.equal(pauses.length, 5);
  const base = [10, 20, 40, 40, 40];
  pauses.forEach((ms, i) => assert.ok(ms >= base[i] && ms <= base[i] * 1.1, `pause ${i}: ${ms}`));
});

Deno.test("cappedBackoff() doubles from the first wait up to the cap, each within 20% of its step", () => {
  let b = cappedBackoff(100, 1000);
  const steps = [100, 200, 400, 800, 1000, 1000];
  for (const step of steps) {
    assert.ok(b.duration >= step * 0.8 && b.duration <= step * 1.2, `${b.duration} near ${step}`);
    b = b.next();
  }
});
