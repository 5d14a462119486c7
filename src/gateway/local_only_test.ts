import assert from "node:assert/strict";
import { localOnly } from "./local_only.ts";

Deno.test("without auth, a gateway on loopback answers only requests addressed to loopback", () => {
  const check = localOnly("127.0.0.1");
  for (
    const host of ["127.0.0.1:4000", "localhost:4000", "LOCALHOST", "[::1]:4000", "a.localhost"]
  ) {
    assert.equal(check("GET", host, undefined), undefined, host);
  }
  // A site's own name made to resolve to 127.0.0.1 (DNS rebinding).
  for (const host of ["rebind.example:4000", "example.com", "10.0.0.5:4000", "127.0.0.1.nip.io"]) {
    assert.match(check("GET", host, undefined) ?? "", /refused: without auth/, host);
  }
  // Names that are no DNS names, which browsers take all the same, and malformed ones.
  for (const host of ["re_bind.evil.example:4000", "evil.example.:4000", "a b", "x:abc", "[::1"]) {
    assert.match(check("GET", host, undefined) ?? "", /refused: without auth/, host);
  }
  assert.equal(check("GET", "localhost.:4000", undefined), undefined);
  // No Host (HTTP/1.0): addressed to where it was sent.
  assert.equal(check("GET", undefined, undefined), undefined);
  // Bound to every address, the gateway is reached by any name: not checked.
  assert.equal(localOnly("0.0.0.0")("GET", "gw.internal:4000", undefined), undefined);
});

Deno.test("without auth, a write from another site's page is refused, its reads and its own are not", () => {
  for (const check of [localOnly("127.0.0.1"), localOnly("0.0.0.0")]) {
    const host = "127.0.0.1:4000";
    assert.match(check("POST", host, "http://evil.example") ?? "", /POST from .* refused/);
    assert.match(check("DELETE", host, "null") ?? "", /refused/);
    assert.match(check("PUT", host, "http://127.0.0.1:4001") ?? "", /refused/);
    assert.equal(check("POST", host, "http://127.0.0.1:4000"), undefined);
    assert.equal(check("GET", host, "http://evil.example"), undefined);
    assert.equal(check("POST", host, undefined), undefined); // curl, SDKs, the command line
  }
});
