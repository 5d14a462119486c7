/**
 * The user the process runtime runs its workers as (`INFERX_WORKER_USER`).
 *
 * Unset, a worker runs as the node agent's user: root, on a node where the
 * agent makes pod namespaces and snapshots, with every capability. Set, the
 * agent (root) starts each worker through util-linux's `setpriv`: that
 * user's uid and gid, no supplementary groups, no capabilities (none kept,
 * none to inherit, an empty bounding set) and `no_new_privs` (no setuid
 * program gains any). Such a worker cannot read the environment of the
 * platform's processes, enter their namespaces, change its own namespace's
 * routes, or write what its user may not.
 *
 * @module
 */
import { WORKER_USER_RE } from "../common/config.ts";
import { InferxError } from "../common/errors.ts";

/** A user workers run as. */
export interface WorkerUser {
  uid: number;
  gid: number;
  /** Its home directory (from the password file), the worker's `HOME`. */
  home?: string;
}

/** The entries of a password file (`name:x:uid:gid:gecos:home:shell`) by name and by uid. */
function passwdEntries(text: string): { name: string; uid: number; gid: number; home: string }[] {
  return text.split("\n").map((l) => l.split(":")).filter((f) => f.length >= 7).map((f) => ({
    name: f[0],
    uid: Number(f[2]),
    gid: Number(f[3]),
    home: f[5],
  }));
}

/**
 * The user `spec` names (`INFERX_WORKER_USER`): a name, found in the
 * password file; a uid, with its group from the password file when it is
 * there, else the uid's number; or `uid:gid`. Root (uid 0) is refused: it
 * is what unset means.
 */
export function resolveWorkerUser(spec: string, passwd?: string): WorkerUser {
  if (!WORKER_USER_RE.test(spec)) {
    throw new InferxError(
      "invalid",
      `INFERX_WORKER_USER="${spec}" is not a user name, a uid or uid:gid`,
    );
  }
  let entries: ReturnType<typeof passwdEntries> | undefined;
  const read = () =>
    entries ??= passwdEntries(
      passwd ?? (() => {
        try {
          return Deno.readTextFileSync("/etc/passwd");
        } catch {
          return "";
        }
      })(),
    );
  let user: WorkerUser;
  if (/^\d/.test(spec)) {
    const [uid, gid] = spec.split(":").map(Number);
    const entry = read().find((e) => e.uid === uid);
    user = { uid, gid: gid ?? entry?.gid ?? uid, home: entry?.home };
  } else {
    const entry = read().find((e) => e.name === spec);
    if (!entry) {
      throw new InferxError(
        "invalid",
        `INFERX_WORKER_USER="${spec}": no such user in /etc/passwd (a uid, or uid:gid, needs none)`,
      );
    }
    user = { uid: entry.uid, gid: entry.gid, home: entry.home };
  }
  if (user.uid === 0) {
    throw new InferxError(
      "invalid",
      `INFERX_WORKER_USER="${spec}" is root: leave it unset to run workers as the agent's user`,
    );
  }
  return user;
}

/** The `setpriv` command line (before the worker's own) that runs a program as `user`. */
export function dropPrivileges(setpriv: string, user: WorkerUser): string[] {
  return [
    setpriv,
    `--reuid=${user.uid}`,
    `--regid=${user.gid}`,
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
    "--no-new-privs",
    "--",
  ];
}
