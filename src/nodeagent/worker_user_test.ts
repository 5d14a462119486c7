import assert from "node:assert/strict";
import { InferxError } from "../common/errors.ts";
import { dropPrivileges, resolveWorkerUsers, userFor } from "./worker_user.ts";

const PASSWD = `root:x:0:0:root:/root:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
svc-models:x:1001:1002::/home/svc-models:/bin/sh
wheelish:x:1003:0::/home/w:/bin/sh
broken line
`;

Deno.test("resolveWorkerUsers() finds a name, a uid, uid:gid or a range of uids", () => {
  assert.deepEqual(resolveWorkerUsers("nobody", PASSWD), {
    one: { uid: 65534, gid: 65534, home: "/nonexistent" },
  });
  assert.deepEqual(resolveWorkerUsers("svc-models", PASSWD), {
    one: { uid: 1001, gid: 1002, home: "/home/svc-models" },
  });
  // A uid takes its group from the password file when it is there, else its own number.
  assert.deepEqual(resolveWorkerUsers("1001", PASSWD), {
    one: { uid: 1001, gid: 1002, home: "/home/svc-models" },
  });
  assert.deepEqual(resolveWorkerUsers("5000", PASSWD), {
    one: { uid: 5000, gid: 5000, home: undefined },
  });
  assert.deepEqual(resolveWorkerUsers("5000:100", PASSWD), {
    one: { uid: 5000, gid: 100, home: undefined },
  });
  assert.deepEqual(resolveWorkerUsers("200000-200999", PASSWD), { first: 200000, last: 200999 });
  assert.deepEqual(resolveWorkerUsers("4294967294", PASSWD), {
    one: { uid: 4294967294, gid: 4294967294, home: undefined },
  });
});

Deno.test("resolveWorkerUsers() refuses an unknown name, root's ids, ids past 2^32-2 and what is no user", () => {
  const refused = (spec: string, why: RegExp) =>
    assert.throws(() => resolveWorkerUsers(spec, PASSWD), (e: InferxError) => {
      assert.equal(e.code, "invalid");
      assert.match(e.message, why);
      return true;
    }, spec);
  refused("ghost", /names no user of \/etc\/passwd/);
  for (const root of ["root", "0", "0:0", "65534:0", "wheelish", "0-10"]) {
    refused(root, /is root's user or group/);
  }
  // The system calls take 2^32-1 for "unchanged" (root stays root) and wrap what is past it.
  for (
    const past of ["4294967295", "4294967296", "9999999999", "65534:4294967295", "1-4294967295"]
  ) {
    refused(past, /has an id past 4294967294/);
  }
  refused("300-200", /last uid comes before its first/);
  for (const bad of ["", "no body", "-x", "1:2:3", "x;id", "../etc", "1:", ":1", "1-", "1-2-3"]) {
    refused(bad, /is not a user name, a uid, uid:gid or a range of uids/);
  }
});

Deno.test("userFor() gives the one user to all, or the lowest uid of the range no worker holds", () => {
  const one = { uid: 65534, gid: 65534 };
  assert.equal(userFor({ one }, new Set([65534])), one);
  const range = { first: 100, last: 102 };
  assert.deepEqual(userFor(range, new Set()), { uid: 100, gid: 100 });
  assert.deepEqual(userFor(range, new Set([100, 102])), { uid: 101, gid: 101 });
  assert.equal(userFor(range, new Set([100, 101, 102])), undefined);
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
