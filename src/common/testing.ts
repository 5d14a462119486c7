/**
 * Helpers shared by the contract suites: a test registrar that opens a
 * fixture per case and always disposes of it, and an error-code assertion.
 *
 * @module
 */
import assert from "node:assert/strict";
import { InferxError } from "./errors.ts";

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

/** Runs `fn` with a new temporary directory, removed afterwards whatever happens. */
export async function withTempDir(
  prefix: string,
  fn: (dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
