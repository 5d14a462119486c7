/**
 * Starts a throwaway PostgreSQL (Debian's `postgresql`) on a free loopback
 * port with a temporary data directory: for tests and benchmarks. As root it
 * runs the server as the `postgres` user, which PostgreSQL insists on.
 *
 * @module
 */

import { freePort } from "../common/net.ts";

/** A running (or stopped, with its data kept) PostgreSQL. */
export interface PgServer {
  /** `postgres://inferx@127.0.0.1:port/postgres`. */
  url: string;
  port: number;
  /** Stops the server and keeps its data (for outage tests). */
  down(): Promise<void>;
  /** Starts it again on the same port and data. */
  up(): Promise<void>;
  /** Stops it and removes its data. */
  stop(): Promise<void>;
}

/** The newest installed PostgreSQL's `bin` directory (Debian's layout), if any. */
export function postgresBinDir(): string | undefined {
  try {
    const versions = [...Deno.readDirSync("/usr/lib/postgresql")]
      .map((e) => Number(e.name)).filter((n) => Number.isFinite(n)).sort((a, b) => b - a);
    for (const v of versions) {
      const dir = `/usr/lib/postgresql/${v}/bin`;
      if (Deno.statSync(`${dir}/postgres`).isFile) return dir;
    }
  } catch {
    // not installed
  }
  return undefined;
}

/** Why PostgreSQL cannot be started here, or undefined when it can. */
export function pgUnavailable(): string | undefined {
  if (!postgresBinDir()) return "PostgreSQL is not installed (Debian package postgresql)";
  if (Deno.uid() === 0 && !postgresUser()) return "running as root without a postgres user";
  return undefined;
}

function postgresUser(): { uid: number; gid: number } | undefined {
  try {
    const line = Deno.readTextFileSync("/etc/passwd").split("\n")
      .find((l) => l.startsWith("postgres:"));
    if (!line) return undefined;
    const [, , uid, gid] = line.split(":");
    return { uid: Number(uid), gid: Number(gid) };
  } catch {
    return undefined;
  }
}

/** `argv` as the postgres user when root, else as is. */
function asOwner(argv: string[]): [string, string[]] {
  if (Deno.uid() !== 0) return [argv[0], argv.slice(1)];
  // setpriv execs in place (runuser forks), so signals reach the server itself.
  return ["setpriv", ["--reuid=postgres", "--regid=postgres", "--init-groups", ...argv]];
}

async function run(argv: string[]): Promise<void> {
  const [cmd, args] = asOwner(argv);
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    const text = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
    throw new Error(`${argv[0]} failed:\n${text.slice(-2000)}`);
  }
}

/** Initialises a cluster and starts PostgreSQL; resolves once it accepts connections. */
export async function startPostgres(): Promise<PgServer> {
  const bin = postgresBinDir();
  if (!bin) throw new Error(pgUnavailable());
  const dir = await Deno.makeTempDir({ prefix: "inferx-pg-" });
  const owner = Deno.uid() === 0 ? postgresUser() : undefined;
  if (owner) await Deno.chown(dir, owner.uid, owner.gid);
  const data = `${dir}/data`;
  await run([
    `${bin}/initdb`,
    "-D",
    data,
    "-U",
    "inferx",
    "--auth=trust",
    "-E",
    "UTF8",
    "--no-sync",
  ]);
  const port = freePort();
  let proc: Deno.ChildProcess | undefined;
  let log = "";

  const up = async () => {
    const [cmd, args] = asOwner([
      `${bin}/postgres`,
      "-D",
      data,
      "-h",
      "127.0.0.1",
      "-p",
      String(port),
      "-k",
      dir,
      "-c",
      "fsync=off",
      "-c",
      "synchronous_commit=off",
      "-c",
      "full_page_writes=off",
    ]);
    proc = new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).spawn();
    const p = proc;
    (async () => {
      for await (const t of p.stderr.pipeThrough(new TextDecoderStream())) {
        log = (log + t).slice(-4000);
      }
    })().catch(() => {});
    const deadline = Date.now() + 20_000;
    while (true) {
      const ready = await new Deno.Command(`${bin}/pg_isready`, {
        args: ["-h", "127.0.0.1", "-p", String(port), "-U", "inferx", "-q"],
      }).output();
      if (ready.success) return;
      if (Date.now() > deadline) {
        p.kill("SIGKILL");
        throw new Error(`PostgreSQL did not start in 20 s:\n${log}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  const down = async () => {
    if (!proc) return;
    const p = proc;
    proc = undefined;
    const kill = (sig: Deno.Signal) => {
      try {
        p.kill(sig);
      } catch {
        // already gone
      }
    };
    kill("SIGINT"); // fast shutdown: clients are disconnected
    const timer = setTimeout(() => kill("SIGKILL"), 10_000);
    await p.status;
    clearTimeout(timer);
  };

  await up();
  return {
    url: `postgres://inferx@127.0.0.1:${port}/postgres`,
    port,
    up,
    down,
    async stop() {
      await down();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}
