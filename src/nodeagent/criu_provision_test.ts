import assert from "node:assert/strict";
import { parseDependsClosure, provisionCriu } from "./criu_provision.ts";

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

Deno.test("provisioning CRIU as another user than root says it needs root, or keeps what is there, and downloads nothing", async () => {
  const prefix = await Deno.makeTempDir();
  try {
    const lines: string[] = [];
    const say = (l: string) => lines.push(l);
    // An unreachable mirror: a download would fail with another message.
    const opts = { prefix, uid: 1000, mirror: "http://127.0.0.1:9/debian", say };
    await assert.rejects(provisionCriu(opts), /needs root/);
    assert.deepEqual(lines, [], "no package list fetched");
    // A prefix provisioned before (by root): kept, and said so.
    const bin = `${prefix}/usr/sbin/criu`;
    await Deno.mkdir(`${prefix}/usr/sbin`, { recursive: true });
    await Deno.mkdir(`${prefix}/usr/lib/x86_64-linux-gnu`, { recursive: true });
    await Deno.writeTextFile(bin, "#!/bin/sh\n");
    await Deno.chmod(bin, 0o755);
    await Deno.writeTextFile(`${prefix}/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2`, "");
    const info = { version: "4.2.1", suite: "sid", mirror: "m", packages: [], provisionedAt: "t" };
    await Deno.writeTextFile(`${prefix}/inferx-criu.json`, JSON.stringify(info));
    assert.deepEqual(await provisionCriu(opts), info);
    assert.match(lines.join("\n"), /already in .* \(its check needs root: not run\)/);
  } finally {
    await Deno.remove(prefix, { recursive: true });
  }
});
