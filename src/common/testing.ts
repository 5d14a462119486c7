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

/** Creates tenant `tenant` and its namespace `namespace` through `meta`. */
export async function seedNamespace(
  meta: {
    create(
      input: {
        type: "tenant" | "namespace";
        tenant: string;
        namespace: string;
        name: string;
        object: unknown;
      },
    ): Promise<unknown>;
  },
  tenant: string,
  namespace: string,
): Promise<void> {
  await meta.create({
    type: "tenant",
    tenant: "system",
    namespace: "system",
    name: tenant,
    object: {},
  });
  await meta.create({
    type: "namespace",
    tenant,
    namespace: "system",
    name: namespace,
    object: {},
  });
}
