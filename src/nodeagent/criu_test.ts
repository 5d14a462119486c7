import assert from "node:assert/strict";
import { procState } from "../ffi/libc.ts";
import {
  Criu,
  criuCapability,
  CriuKilled,
  locateCriu,
  logReason,
  openFiles,
  redirection,
  restoreSetup,
  sweepCriuOutput,
} from "./criu.ts";

/** Lays out a fake provisioned prefix (criu and its loader) under `dir`. */
async function fakePrefix(dir: string): Promise<string> {
  await Deno.mkdir(`${dir}/usr/sbin`, { recursive: true });
  await Deno.mkdir(`${dir}/usr/lib/x86_64-linux-gnu`, { recursive: true });
  await Deno.writeTextFile(`${dir}/usr/sbin/criu`, "");
  await Deno.writeTextFile(`${dir}/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2`, "");
  return dir;
}

Deno.test("locateCriu() takes INFERX_CRIU first, then the provisioned prefix, then the system's", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const prefix = await fakePrefix(`${dir}/prefix`);
    const system = `${dir}/system-criu`;
    await Deno.writeTextFile(system, "");
    const fromEnv = locateCriu({ env: "/opt/criu/bin/criu", prefix, system: [system] });
    assert.deepEqual(fromEnv, {
      argv: ["/opt/criu/bin/criu"],
      path: "/opt/criu/bin/criu",
      source: "INFERX_CRIU",
    });
    // INFERX_CRIU naming a prefix (or the criu inside one) runs it through the prefix's loader.
    for (const env of [prefix, `${prefix}/usr/sbin/criu`]) {
      const b = locateCriu({ env, system: [system] })!;
      assert.equal(b.source, "INFERX_CRIU");
      assert.deepEqual(b.argv, [
        `${prefix}/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2`,
        "--library-path",
        `${prefix}/usr/lib/x86_64-linux-gnu`,
        `${prefix}/usr/sbin/criu`,
      ]);
    }
    assert.equal(locateCriu({ env: "", prefix, system: [system] })?.source, "provisioned");
    assert.deepEqual(locateCriu({ env: "", prefix: `${dir}/none`, system: [system] }), {
      argv: [system],
      path: system,
      source: "system",
    });
    assert.equal(locateCriu({ env: "", prefix: `${dir}/none`, system: [] }), undefined);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("criuCapability() says how to get CRIU when there is none", async () => {
  const cap = await criuCapability(null);
  assert.equal(cap.available, false);
  assert.match(cap.reason!, /deno task criu/);
});

const systemCriu = "/usr/sbin/criu";
const systemFails = (() => {
  try {
    Deno.statSync(systemCriu);
  } catch {
    return false;
  }
  return !new Deno.Command(systemCriu, { args: ["check"], stdout: "null", stderr: "null" })
    .outputSync().success;
})();

Deno.test({
  name: "criuCapability() reports a system CRIU that fails its check, with CRIU's first error",
  ignore: !systemFails || Deno.uid?.() !== 0,
  async fn() {
    const cap = await criuCapability({ argv: [systemCriu], path: systemCriu, source: "system" });
    assert.equal(cap.available, false);
    assert.match(cap.version!, /^\d+\.\d+/);
    const out = new Deno.Command(systemCriu, { args: ["check"], stderr: "piped" }).outputSync();
    const first = new TextDecoder().decode(out.stderr).split("\n").find((l) => l.includes("Error"))!
      .replace(/^.*?Error \([^)]*\):\s*/, "");
    assert.ok(cap.reason!.includes(first), `${cap.reason} lacks "${first}"`);
    assert.match(cap.reason!, /deno task criu/);
  },
});

const provisioned = locateCriu({ env: "" });
Deno.test({
  name: "criuCapability() finds the provisioned CRIU, its version, and that it passes its check",
  ignore: provisioned?.source !== "provisioned" || Deno.uid?.() !== 0,
  async fn() {
    const cap = await criuCapability(provisioned!);
    assert.equal(cap.available, true, cap.reason);
    assert.equal(cap.source, "provisioned");
    assert.match(cap.version!, /^\d+\.\d+/);
    assert.match(cap.path!, /\.criu\/usr\/sbin\/criu$/);
  },
});

Deno.test("openFiles() stamps a file open read-only alone, and takes one open both ways as read-write", async () => {
  const dir = await Deno.makeTempDir();
  const ro = `${dir}/weights`, both = `${dir}/state`;
  await Deno.writeTextFile(ro, "0123456789");
  await Deno.writeTextFile(both, "x");
  const held = [
    Deno.openSync(ro, { read: true }),
    Deno.openSync(both, { read: true }),
    Deno.openSync(both, { read: true, write: true }),
  ];
  try {
    const files = await openFiles([Deno.pid]);
    const weights = files.find((f) => f.path === ro)!;
    const st = await Deno.stat(ro);
    assert.deepEqual(weights.was, { size: 10, mtimeMs: st.mtime!.getTime(), ino: st.ino });
    const state = files.filter((f) => f.path === both);
    assert.equal(state.length, 1);
    assert.equal(state[0].flags & 0o3, 0o2, "read-write");
    assert.equal(state[0].was, undefined);
    assert.equal(files.some((f) => f.path === dir), false);
  } finally {
    for (const f of held) f.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("logReason() keeps CRIU's fatal error lines and drops the ones it survives", () => {
  const log = `(00.001) Running check
(00.044) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.047)      1: Error (criu/files-reg.c:2175): File tmp/x has bad size 10 (expect 4)
(00.048) Error (criu/cr-restore.c:2331): Restoring FAILED.`;
  assert.equal(
    logReason(log),
    "Error (criu/files-reg.c:2175): File tmp/x has bad size 10 (expect 4); Error (criu/cr-restore.c:2331): Restoring FAILED.",
  );
  assert.equal(logReason("a\nb\nc\nd"), "b; c; d");
  // Only the error CRIU survives: its other last lines, not that error.
  assert.equal(
    logReason("(00.01) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self\nx"),
    "x",
  );
  assert.equal(logReason(""), "no log");
});

Deno.test({
  name:
    "restoreSetup() joins the group and opens the handed-over files in the shell that runs CRIU",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      // Plain files for the group's cgroup.procs: what is written there is the shell's PID.
      const procs = [`${dir}/memory.procs`, `${dir}/cpu.procs`];
      const [weights, log] = [`${dir}/weights`, `${dir}/out.log`];
      await Deno.writeTextFile(weights, "w");
      await Deno.writeTextFile(log, "before\n");
      const setup = restoreSetup(procs, [
        { key: weights, path: weights, flags: 0 },
        { key: log, path: log, flags: 0o2001 }, // O_WRONLY | O_APPEND
      ]);
      assert.equal(setup.bash, true, "descriptors past 9 need bash");
      // What CRIU would be: it says its PID, and what its descriptors 100 and 101 are.
      const criu = "echo $$; readlink /proc/$$/fd/100 /proc/$$/fd/101; echo after >&101";
      const out = await new Deno.Command("bash", {
        args: [
          "-c",
          [...setup.lines, 'exec "$@"'].join("; "),
          "bash",
          ...setup.args,
          "bash",
          "-c",
          criu,
        ],
        stdout: "piped",
      }).output();
      assert.ok(out.success);
      const [pid, fd100, fd101] = new TextDecoder().decode(out.stdout).trim().split("\n");
      for (const f of procs) assert.equal((await Deno.readTextFile(f)).trim(), pid);
      assert.deepEqual([fd100, fd101], [weights, log]);
      assert.equal(await Deno.readTextFile(log), "before\nafter\n", "appended, not truncated");

      // A group that cannot be joined stops it before CRIU runs: exit 125.
      const bad = restoreSetup([`${dir}/gone/cgroup.procs`], []);
      assert.equal(bad.bash, false);
      const refused = await new Deno.Command("sh", {
        args: ["-c", [...bad.lines, 'exec "$@"'].join("; "), "sh", ...bad.args, "true"],
        stderr: "null",
      }).output();
      assert.equal(refused.code, 125);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("redirection() reopens a file as it was opened, never truncating it", () => {
  const cases: [number, string][] = [
    [0o100000, "<"], // O_RDONLY | O_LARGEFILE
    [0o102001, ">>"], // O_WRONLY | O_APPEND
    [0o100001, "<>"], // O_WRONLY without append: read-write, not ">"
    [0o100002, "<>"], // O_RDWR
  ];
  for (const [flags, want] of cases) assert.equal(redirection(flags), want, flags.toString(8));
});

Deno.test("a CRIU run cut off by its time limit ends, with every process it forked, even a stopped one", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // A "criu" that forks a helper which stops itself holding the output, then waits for ever.
    const script =
      `echo $BASHPID > ${dir}/parent; (echo $BASHPID > ${dir}/helper; kill -STOP $BASHPID) & sleep 100`;
    const criu = new Criu({ argv: ["bash", "-c", script, "criu"], path: "bash", source: "system" });
    const t0 = performance.now();
    const err = await criu.restore(`${dir}/image`, { workDir: `${dir}/work`, timeoutMs: 300 })
      .catch((e) => e);
    const ms = performance.now() - t0;
    assert.equal(err.code, "timeout", String(err));
    assert.ok(ms < 5000, `ended after ${Math.round(ms)} ms`);
    for (const name of ["parent", "helper"]) {
      const pid = Number(await Deno.readTextFile(`${dir}/${name}`));
      // Gone, or a zombie its parent (PID 1 here, which may not reap) has not reaped yet; a
      // signal takes a moment to land (a stopped process is woken to die).
      const alive = async () => {
        const state = await Deno.readTextFile(`/proc/${pid}/stat`).then(
          (s) => s.slice(s.lastIndexOf(")") + 2, s.lastIndexOf(")") + 3),
          () => "gone",
        );
        return state !== "gone" && state !== "Z";
      };
      const deadline = Date.now() + 2000;
      while (await alive() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      assert.equal(await alive(), false, `the ${name} is gone`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a restore CRIU has given up on is ended a moment after it says so, not at its time limit", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // A "criu" that logs its failure, as CRIU does when a page file was damaged in place,
    // then waits on (as CRIU did, on a restored process that never ends).
    const script = `echo "Error (criu/cr-restore.c): Restoring FAILED." >> ${dir}/work/restore.log;
      echo "(01.1) Error: Killing processes because of failure on restore." >> ${dir}/work/restore.log;
      sleep 100`;
    const criu = new Criu({ argv: ["bash", "-c", script, "criu"], path: "bash", source: "system" });
    const t0 = performance.now();
    const err = await criu.restore(`${dir}/image`, { workDir: `${dir}/work`, timeoutMs: 30_000 })
      .catch((e) => e);
    const ms = performance.now() - t0;
    assert.equal(err.code, "worker_failed", String(err));
    assert.match(err.message, /Restoring FAILED/);
    assert.ok(ms < 6000, `ended after ${Math.round(ms)} ms`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a dump whose CRIU is killed from outside says so, retryable; one that crashes, its log", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // A "criu" that logs the error CRIU logs at every dump and survives, then ends by `signal`.
    const criuEndedBy = (signal: string) =>
      new Criu({
        argv: [
          "bash",
          "-c",
          `echo "(00.01) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self" >> ${dir}/img/dump.log; ` +
          `echo "(00.02) Dumping pages" >> ${dir}/img/dump.log; kill -${signal} $$`,
          "criu",
        ],
        path: "bash",
        source: "system",
      });
    const killed = await criuEndedBy("KILL").dump(7, `${dir}/img`).catch((e) => e);
    assert.ok(killed instanceof CriuKilled, String(killed));
    assert.equal(killed.retryable, true);
    assert.equal(
      killed.message,
      "Cannot dump process 7: CRIU was killed (SIGKILL) before it finished",
    );
    const crashed = await criuEndedBy("SEGV").dump(7, `${dir}/img`).catch((e) => e);
    assert.ok(!(crashed instanceof CriuKilled), String(crashed));
    assert.equal(crashed.code, "internal");
    assert.doesNotMatch(crashed.message, /RLIMIT_NOFILE/, "the line CRIU survives is no reason");
    assert.match(crashed.message, /Dumping pages/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sweepCriuOutput() removes the output files of CRIU runs whose agent has ended, and only those", async () => {
  const ended = new Deno.Command("true").spawn();
  await ended.status;
  const left = await Deno.makeTempFile({ prefix: `inferx-criu-${ended.pid}-` });
  const ours = await Deno.makeTempFile({ prefix: `inferx-criu-${Deno.pid}-` });
  const other = await Deno.makeTempFile({ prefix: "inferx-criux-" });
  // An agent killed a moment ago and not yet reaped (a zombie: its parent never waits for it)
  // has ended too. (perl, essential in Debian: a shell may reap its background child before it
  // `exec`s, and the PID is then gone, not a zombie.)
  const parent = new Deno.Command("perl", {
    args: ["-e", 'if (my $p = fork) { $| = 1; print "$p\\n"; sleep 30 } else { exit 0 }'],
    stdout: "piped",
  }).spawn();
  const reader = parent.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const zombie = Number((await reader.read()).value);
  for (let i = 0; (await procState(zombie))?.state !== "Z"; i++) {
    assert.ok(i < 500, `PID ${zombie} never became a zombie`);
    await new Promise((r) => setTimeout(r, 10));
  }
  const dead = await Deno.makeTempFile({ prefix: `inferx-criu-${zombie}-` });
  try {
    await sweepCriuOutput();
    const exists = (p: string) => Deno.stat(p).then(() => true, () => false);
    assert.deepEqual(
      await Promise.all([left, ours, other, dead].map(exists)),
      [false, true, true, false],
    );
  } finally {
    parent.kill("SIGKILL");
    await parent.status;
    await reader.cancel();
    for (const p of [left, ours, other, dead]) await Deno.remove(p).catch(() => {});
  }
});
