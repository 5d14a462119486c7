/**
 * The user the process runtime runs its workers as (`INFERX_WORKER_USER`).
 *
 * Unset, a worker runs as the node agent's user: root, on a node where the
 * agent makes pod namespaces and snapshots, with every capability. Set, the
 * agent (root) starts each worker through util-linux's `setpriv`: that
 * user's uid and gid, no supplementary groups, no capabilities (none kept, none to
 * inherit, an empty bounding set) and `no_new_privs` (no setuid program
 * gains any). Such a worker cannot read the environment of the platform's
 * processes, enter their namespaces, change its own namespace's routes, or
 * write what its user may not.
 *
 * The one user is every worker's, so workers are not kept from each other:
 * the kernel lets processes of one uid read each other's `/proc/PID/environ`
 * and signal each other, and they share the host's `/tmp`, `/dev/shm` and
 * IPC objects. (A uid of its own per worker would not be enough either: a
 * uid handed to the next worker gives it what the last one left there.)
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

/** The largest id a user or group may have (2^32 - 1 is "unchanged" to the system calls). */
export const MAX_ID = 4_294_967_294;

/** The entries of a password file (`name:x:uid:gid:gecos:home:shell`) by name and by uid. */
function passwdEntries(text: string): { name: string; uid: number; gid: number; home: string }[] {
  return text.split("\n").map((l) => l.split(":")).filter((f) => f.length >= 7).map((f) => ({
    name: f[0],
    uid: Number(f[2]),
    gid: Number(f[3]),
    home: f[5],
  }));
}

function invalid(spec: string, why: string): InferxError {
  return new InferxError("invalid", `INFERX_WORKER_USER="${spec}" ${why}`);
}

/** Refuses root's ids (0: what unset means) and ids past {@linkcode MAX_ID}. */
function checkIds(spec: string, uid: number, gid: number): void {
  if (uid === 0 || gid === 0) {
    throw invalid(spec, "is root's user or group: leave it unset to run workers as the agent's");
  }
  if (uid > MAX_ID || gid > MAX_ID) {
    throw invalid(spec, `has an id past ${MAX_ID}, which no user may have`);
  }
}

/**
 * The user `spec` names (`INFERX_WORKER_USER`): a name, found in the
 * password file; a uid, with its group from the password file when it is
 * there, else the uid's number; or `uid:gid`. Root's user and group (0),
 * and ids past {@linkcode MAX_ID}, are refused.
 */
export function resolveWorkerUser(spec: string, passwd?: string): WorkerUser {
  if (!WORKER_USER_RE.test(spec)) throw invalid(spec, "is not a user name, a uid or uid:gid");
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
      throw invalid(spec, "names no user of /etc/passwd (a uid, or uid:gid, needs none)");
    }
    user = { uid: entry.uid, gid: entry.gid, home: entry.home };
  }
  checkIds(spec, user.uid, user.gid);
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
