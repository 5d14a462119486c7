/**
 * Helpers shared by tests: a test registrar that opens a fixture per case
 * and always disposes of it, an error-code assertion, and the sources' text
 * (for tests that check what configuration the code reads).
 *
 * @module
 */
import assert from "node:assert/strict";
import { InferxError } from "./errors.ts";
import { REPO_ROOT } from "./config.ts";

/** Registers cases named `${prefix}: ${title}`, each with a fresh fixture. */
export function fixtureTests<F extends { dispose(): Promise<void> }>(
  prefix: string,
  open: () => Promise<F>,
  options: { ignore?: boolean } = {},
): (title: string, fn: (fixture: F) => Promise<void>) => void {
  return (title, fn) =>
    Deno.test({
      name: `${prefix}: ${title}`,
      ignore: options.ignore ?? false,
      sanitizeOps: false,
      sanitizeResources: false,
      fn: async () => {
        const f = await open();
        try {
          await fn(f);
        } finally {
          await f.dispose();
        }
      },
    });
}

/** For `assert.rejects`: the error is an `InferxError` with code `code`. */
export function hasCode(code: string): (err: unknown) => true {
  return (err: unknown) => {
    assert.ok(err instanceof InferxError, String(err));
    assert.equal(err.code, code, err.message);
    return true;
  };
}

/** The text of every TypeScript file under `dir` (default `src/`) but the tests. */
export async function sourceText(dir = `${REPO_ROOT}/src`): Promise<string> {
  let all = "";
  for await (const e of Deno.readDir(dir)) {
    if (e.isDirectory) all += await sourceText(`${dir}/${e.name}`);
    else if (e.name.endsWith(".ts") && !e.name.endsWith("_test.ts")) {
      all += await Deno.readTextFile(`${dir}/${e.name}`);
    }
  }
  return all;
}
