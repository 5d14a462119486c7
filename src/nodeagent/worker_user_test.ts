import assert from "node:assert/strict";
import { InferxError } from "../common/errors.ts";
import { dropPrivileges, resolveWorkerUser } from "./worker_user.ts";

const PASSWD = `root:x:0:0:root:/root:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
svc-models:x:1001:1002::/home/svc-models:/bin/sh
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
  assert.deepEqual(resolveWorkerUser("5000:100", PASSWD), {
    uid: 5000,
    gid: 100,
    home: undefined,
  });
});

Deno.test("resolveWorkerUser() refuses an unknown name, root and what is no user", () => {
  const refused = (spec: string, why: RegExp) =>
    assert.throws(() => resolveWorkerUser(spec, PASSWD), (e: InferxError) => {
      assert.equal(e.code, "invalid");
      assert.match(e.message, why);
      return true;
    });
  refused("ghost", /no such user in \/etc\/passwd/);
  refused("root", /is root: leave it unset/);
  refused("0", /is root/);
  refused("0:0", /is root/);
  for (const bad of ["", "no body", "-x", "1:2:3", "x;id", "../etc", "1:", ":1"]) {
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
