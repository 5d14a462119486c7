import assert from "node:assert/strict";
import { parseDependsClosure } from "./criu_provision.ts";

Deno.test("parseDependsClosure() lists the packages apt-cache names, without virtual ones", () => {
  const text = `criu
  Depends: libc6
  Depends: libnet9
libc6
  Depends: libgcc-s1
libnet9
<libc-dev>
libgcc-s1
`;
  assert.deepEqual(parseDependsClosure(text), ["criu", "libc6", "libgcc-s1", "libnet9"]);
});
