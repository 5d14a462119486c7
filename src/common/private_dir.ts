/**
 * Directories only their owner may enter: the store (callback secrets, the
 * bodies and answers of asynchronous calls), the audit (who called what) and
 * workers' output and images are written into them, and the files' own modes
 * come from SQLite and the umask (readable by everyone, as a rule).
 *
 * @module
 */

/**
 * Makes directory `path` (and any parents missing, the same way) with mode
 * 0700, and sets 0700 on it when it was there already (where it can: not on
 * a read-only file system, nor another user's directory, which the caller's
 * own use of it then tells of).
 */
export function privateDir(path: string): void {
  Deno.mkdirSync(path, { recursive: true, mode: 0o700 });
  try {
    Deno.chmodSync(path, 0o700);
  } catch {
    // read-only, or not ours
  }
}
