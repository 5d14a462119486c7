import assert from "node:assert/strict";
import { DEFAULT_OPTS, runSeed } from "./fuzz_testing.ts";

/** Seeds and steps of a run; `FUZZ_SEEDS` and `FUZZ_STEPS` widen it. */
const SEEDS = Number(Deno.env.get("FUZZ_SEEDS") ?? 80);
const STEPS = Number(Deno.env.get("FUZZ_STEPS") ?? 300);

Deno.test(`the scheduler core's invariants hold over ${SEEDS} seeds of ${STEPS} random events (nodes falling silent, restarts, resizes)`, () => {
  const options = { ...DEFAULT_OPTS, steps: STEPS, resize: true };
  const broken: string[] = [];
  let checks = 0;
  for (let seed = 1; seed <= SEEDS; seed++) {
    const { fz } = runSeed(seed, options);
    for (const n of fz.checks.values()) checks += n;
    const v = fz.violations[0];
    if (v) broken.push(`seed ${seed}, step ${v.step}: ${v.invariant}: ${v.detail}`);
  }
  assert.deepEqual(broken, []);
  assert.ok(checks > SEEDS * STEPS, `only ${checks} checks were made`);
});

Deno.test("the scheduler core decides the same for the same seed", () => {
  for (let seed = 1; seed <= 20; seed++) {
    const a = runSeed(seed).fz.actionsLog;
    assert.ok(a.length > 0);
    assert.deepEqual(runSeed(seed).fz.actionsLog, a, `seed ${seed}`);
  }
});
