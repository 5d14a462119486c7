/**
 * Rows for audit tests.
 *
 * @module
 */
import type { RequestRow } from "./types.ts";

/** A request row numbered `i` (its path is `/r{i}`, its time `time`). */
export function sampleRequest(i: number, time = i): RequestRow {
  return {
    time,
    gateway: "g",
    principal: "anonymous",
    tenant: "t",
    namespace: "n",
    func: "f",
    method: "POST",
    path: `/r${i}`,
    status: 200,
    latencyMs: 1,
    coldStart: false,
    resumed: false,
  };
}

/**
 * Request rows with token figures: two versions of `t/n/f`, one of `u/n/g`,
 * a row without tokens and one before `since` (1000), for usage tests.
 */
export function tokenRows(): RequestRow[] {
  const tok = (
    i: number,
    tenant: string,
    func: string,
    version: number,
    f: Partial<RequestRow>,
  ): RequestRow => ({ ...sampleRequest(i, 1000 + i), tenant, func, version, ...f });
  return [
    tok(1, "t", "f", 1, {
      ttftMs: 100,
      itlP50Ms: 10,
      itlP99Ms: 30,
      tokensPerS: 50,
      promptTokens: 5,
      completionTokens: 20,
    }),
    tok(2, "t", "f", 1, {
      ttftMs: 300,
      itlP50Ms: 20,
      itlP99Ms: 90,
      tokensPerS: 30,
      promptTokens: 7,
      completionTokens: 10,
    }),
    tok(3, "t", "f", 2, { ttftMs: 50, tokensPerS: 100, promptTokens: 3, completionTokens: 4 }),
    tok(4, "u", "g", 1, { ttftMs: 80, completionTokens: 6 }),
    tok(5, "t", "f", 1, {}), // not an OpenAI-style answer
    { ...sampleRequest(6, 10), ttftMs: 1, promptTokens: 1000, completionTokens: 1000 }, // too old
  ];
}
