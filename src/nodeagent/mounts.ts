/**
 * The mounts a process sees, from the text of `/proc/PID/mountinfo`.
 *
 * @module
 */

/** One line of mountinfo. */
export interface Mount {
  /** The path of the file system mounted there (a bind mount's source inside it). */
  root: string;
  /** Where it is mounted. */
  point: string;
  fstype: string;
  /** The file system's own options (a v1 cgroup hierarchy's controllers, say). */
  superOpts: string;
}

/** The mounts of a mountinfo text, in its order (the last of those stacked on a point is seen). */
export function parseMountinfo(mountinfo: string): Mount[] {
  const out: Mount[] = [];
  for (const line of mountinfo.split("\n")) {
    const [pre, post] = line.split(" - ");
    if (!post) continue;
    const f = pre.split(" ");
    const [fstype, , superOpts = ""] = post.split(" ");
    if (!fstype || f[4] === undefined) continue;
    out.push({ root: unescapeMount(f[3]), point: unescapeMount(f[4]), fstype, superOpts });
  }
  return out;
}

/** mountinfo writes space, tab, newline and backslash as octal escapes. */
function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));
}
