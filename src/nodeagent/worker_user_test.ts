import assert from "node:assert/strict";
import { InferxError } from "../common/errors.ts";
import { dropPrivileges, resolveWorkerUser } from "./worker_user.ts";

const PASSWD = `root:x:0:0:root:/root:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
svc-models:x:1001:1002::/home/svc-models:/bin/sh
wheelish:x:1003:0::/home/w:/bin/sh
broken line
`;

Deno.test("resolveWorkerUser() finds a name, a uid or uid:gid", () => {
  assert.deepEqual(resolveWorkerUser("nobody", PASSWD), {
    uid: 65534,
    gid: 65534,
    home: "/nonexistent",
  });
  assert.deepEqual(resolveWorkerUser("svc-models", PASSWD), {
    uid: 1001,
    gid: 1002,
    home: "/home/svc-models",
  });
  // A uid takes its group from the password file when it is there, else its own number.
  assert.deepEqual(resolveWorkerUser("1001", PASSWD), {
    uid: 1001,
    gid: 1002,
    home: "/home/svc-models",
  });
  assert.deepEqual(resolveWorkerUser("5000", PASSWD), { uid: 5000, gid: 5000, home: undefined });
  assert.deepEqual(resolveWorkerUser("5000:100", PASSWD), { uid: 5000, gid: 100, home: undefined });
  assert.deepEqual(resolveWorkerUser("4294967294", PASSWD), {
    uid: 4294967294,
    gid: 4294967294,
    home: undefined,
  });
});

Deno.test("resolveWorkerUser() refuses an unknown name, root's ids, ids past 2^32-2 and what is no user", () => {
  const refused = (spec: string, why: RegExp) =>
    assert.throws(() => resolveWorkerUser(spec, PASSWD), (e: InferxError) => {
      assert.equal(e.code, "invalid");
      assert.match(e.message, why);
      return true;
    }, spec);
  refused("ghost", /names no user of \/etc\/passwd/);
  for (const root of ["root", "0", "0:0", "65534:0", "wheelish"]) {
    refused(root, /is root's user or group/);
  }
  // The system calls take 2^32-1 for "unchanged" (root stays root) and wrap what is past it.
  for (const past of ["4294967295", "4294967296", "9999999999", "65534:4294967295"]) {
    refused(past, /has an id past 4294967294/);
  }
  for (const bad of ["", "no body", "-x", "1:2:3", "x;id", "../etc", "1:", ":1", "1-2"]) {
    refused(bad, /is not a user name, a uid or uid:gid/);
  }
});

Deno.test("dropPrivileges() drops the groups, every capability, and setuid gains", () => {
  assert.deepEqual(dropPrivileges("/usr/bin/setpriv", { uid: 65534, gid: 65534 }), [
    "/usr/bin/setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
    "--no-new-privs",
    "--",
  ]);
});
