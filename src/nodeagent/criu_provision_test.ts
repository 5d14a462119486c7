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

Deno.test("a mirror whose Release is past its Valid-Until is taken all the same, and said so", async () => {
  const dir = await Deno.makeTempDir();
  const path = Deno.env.get("PATH")!;
  try {
    // apt-get as such a mirror makes it: `update` refuses the expired Release unless told to
    // take it; `download` then fails on purpose, to end the run there.
    await Deno.mkdir(`${dir}/bin`);
    await Deno.writeTextFile(
      `${dir}/bin/apt-get`,
      `#!/bin/sh
echo "$*" >> ${dir}/calls
case "$*" in
  *Check-Valid-Until=false*update*) exit 0 ;;
  *update*) echo "E: Release file for http://m/dists/sid/InRelease is expired (invalid since 28d 17h)." >&2; exit 100 ;;
  *download*) echo "E: stop here" >&2; exit 100 ;;
esac
`,
    );
    await Deno.writeTextFile(`${dir}/bin/apt-cache`, "#!/bin/sh\necho criu\n");
    await Deno.chmod(`${dir}/bin/apt-get`, 0o755);
    await Deno.chmod(`${dir}/bin/apt-cache`, 0o755);
    await Deno.writeTextFile(`${dir}/keyring.gpg`, "");
    Deno.env.set("PATH", `${dir}/bin:${path}`);
    const lines: string[] = [];
    await assert.rejects(
      provisionCriu({
        prefix: `${dir}/criu`,
        uid: 0,
        force: true,
        keyring: `${dir}/keyring.gpg`,
        say: (l) => lines.push(l),
      }),
      /download criu failed: E: stop here/,
    );
    assert.match(
      lines.join("\n"),
      /Release file at .* is past its Valid-Until: taken all the same/,
    );
    const calls = (await Deno.readTextFile(`${dir}/calls`)).trim().split("\n");
    assert.equal(calls.length, 3, calls.join("\n"));
    assert.doesNotMatch(calls[0], /Check-Valid-Until/, "asked as usual first");
    assert.match(calls[1], /Acquire::Check-Valid-Until=false .*update/);
    assert.match(calls[2], /Acquire::Check-Valid-Until=false .*download criu/);
  } finally {
    Deno.env.set("PATH", path);
    await Deno.remove(dir, { recursive: true });
  }
});
