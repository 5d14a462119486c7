import assert from "node:assert/strict";
import { fromGrpcError, grpc, toGrpcError } from "./grpc.ts";
import { InferxError } from "../common/errors.ts";

Deno.test("a message over the size limit, raised by the library itself, is too_large and not retried", () => {
  const e = fromGrpcError(
    {
      code: grpc.status.RESOURCE_EXHAUSTED,
      details: "Received message larger than max (5593906 vs 4194304)",
    },
    "the state service",
  );
  assert.equal(e.code, "too_large");
  assert.equal(e.retryable, false);
});

Deno.test("the platform's own RESOURCE_EXHAUSTED errors keep their codes across the wire", () => {
  for (const code of ["queue_full", "quota_exceeded", "unschedulable", "too_large"] as const) {
    const wire = toGrpcError(new InferxError(code, "x"));
    assert.equal(wire.code, grpc.status.RESOURCE_EXHAUSTED);
    assert.equal(fromGrpcError(wire, "peer").code, code);
  }
});
