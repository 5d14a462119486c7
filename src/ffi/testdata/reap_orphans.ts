/**
 * Run by libc_test.ts in a process of its own: as a child subreaper (as a
 * node agent in a container is), it gets two orphaned grandchildren, one
 * killed by SIGKILL and one that exits with code 7, and prints how
 * `reapIfOrphanedToUs` says each ended: one JSON line.
 */
import { becomeSubreaper, procState, reapIfOrphanedToUs } from "../libc.ts";

if (!becomeSubreaper()) throw new Error("prctl(PR_SET_CHILD_SUBREAPER) failed");
/** A grandchild left to this process: its shell parent exits at once. */
async function orphan(script: string): Promise<number> {
  const out = await new Deno.Command("sh", {
    args: ["-c", `(${script}) >/dev/null 2>&1 & echo $!`],
    stdout: "piped",
  }).output();
  return Number(new TextDecoder().decode(out.stdout).trim());
}
async function zombie(pid: number): Promise<void> {
  while ((await procState(pid))?.state !== "Z") await new Promise((r) => setTimeout(r, 10));
}
const killed = await orphan("sleep 30");
Deno.kill(killed, "SIGKILL");
const exited = await orphan("sleep 0.1; exit 7");
await zombie(killed);
await zombie(exited);
console.log(JSON.stringify({
  killed: await reapIfOrphanedToUs(killed),
  exited: await reapIfOrphanedToUs(exited),
  again: await reapIfOrphanedToUs(exited) ?? null,
}));
