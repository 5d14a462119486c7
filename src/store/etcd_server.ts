/**
 * Starts a throwaway etcd (Debian's `etcd-server`) on free loopback ports
 * with a temporary data directory: for tests, benchmarks and local runs.
 *
 * @module
 */

import { freePort } from "../common/net.ts";

/** A running (or stopped, with its data kept) etcd. */
export interface EtcdServer {
  /** `http://127.0.0.1:port` for clients. */
  url: string;
  /**
   * Stops etcd and keeps its data, for outage tests: by SIGTERM (graceful: it
   * tells its clients, with a GOAWAY) unless told otherwise.
   */
  down(signal?: Deno.Signal): Promise<void>;
  /** Starts it again on the same ports and data; resolves once it answers. */
  up(): Promise<void>;
  /** Stops it and removes its data. */
  stop(): Promise<void>;
}

/** Why etcd cannot be started here, or undefined when it can. */
export function etcdUnavailable(): string | undefined {
  try {
    new Deno.Command("etcd", { args: ["--version"], stdout: "null", stderr: "null" }).outputSync();
    return undefined;
  } catch {
    return "the etcd binary is not installed (Debian package etcd-server)";
  }
}

/** Options of {@linkcode startEtcd}. */
export interface StartEtcdOptions {
  /** etcd's `--max-request-bytes`: the largest object it takes. @default etcd's, 1.5 MiB */
  maxRequestBytes?: number;
}

/** Starts etcd and waits until it answers. */
export async function startEtcd(options: StartEtcdOptions = {}): Promise<EtcdServer> {
  const dir = await Deno.makeTempDir({ prefix: "inferx-etcd-" });
  const client = freePort();
  const peer = freePort();
  const url = `http://127.0.0.1:${client}`;
  let proc: Deno.ChildProcess | undefined;

  const up = async () => {
    const p = proc = new Deno.Command("etcd", {
      args: [
        "--name",
        "test",
        "--data-dir",
        dir,
        "--listen-client-urls",
        url,
        "--advertise-client-urls",
        url,
        "--listen-peer-urls",
        `http://127.0.0.1:${peer}`,
        "--initial-advertise-peer-urls",
        `http://127.0.0.1:${peer}`,
        "--initial-cluster",
        `test=http://127.0.0.1:${peer}`,
        // Progress notifications every 200 ms (10 minutes by default): tests see them.
        "--experimental-watch-progress-notify-interval",
        "200ms",
        ...(options.maxRequestBytes
          ? ["--max-request-bytes", String(options.maxRequestBytes)]
          : []),
      ],
      stdout: "null",
      stderr: "piped",
    }).spawn();
    let log = "";
    (async () => {
      for await (const t of p.stderr.pipeThrough(new TextDecoderStream())) {
        log = (log + t).slice(-4000);
      }
    })().catch(() => {});
    const deadline = Date.now() + 15_000;
    while (true) {
      try {
        const r = await fetch(`${url}/health`);
        const body = await r.text();
        if (r.ok && body.includes("true")) break;
      } catch {
        // not yet
      }
      if (Date.now() > deadline) {
        p.kill("SIGKILL");
        throw new Error(`etcd did not start in 15 s:\n${log}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  const down = async (signal: Deno.Signal = "SIGTERM") => {
    const p = proc;
    proc = undefined;
    if (!p) return;
    try {
      p.kill(signal);
    } catch {
      // gone
    }
    await p.status;
  };

  await up();
  return {
    url,
    up,
    down,
    async stop() {
      await down();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}
