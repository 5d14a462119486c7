/**
 * nginx (Debian's `nginx-light`) as a reverse proxy baseline for the
 * benchmarks: one worker process (or as many as asked, to stand beside a
 * gateway with several workers), keep-alive upstream connections, no
 * buffering of answers (server-sent events pass as they come), no access log.
 *
 * @module
 */
import { freePort } from "../src/common/net.ts";
import { listening } from "../tests/e2e/helpers.ts";
import { childPids } from "./wrk.ts";

/** A running nginx in front of its upstreams. */
export interface Nginx {
  url: string;
  /** The master and its workers. */
  pids(): Promise<number[]>;
  stop(): Promise<void>;
}

/**
 * Starts nginx with `workers` processes on a free 127.0.0.1 port proxying to
 * `upstream` (`host:port`), or round robin to each of several.
 */
export async function startNginx(upstream: string | string[], workers = 1): Promise<Nginx> {
  const servers = (Array.isArray(upstream) ? upstream : [upstream]).map((u) => `server ${u};`);
  const dir = await Deno.makeTempDir({ prefix: "inferx-nginx-" });
  const port = freePort();
  const temp = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
    .map((k) => `${k}_temp_path ${dir}/${k};`).join("\n  ");
  await Deno.writeTextFile(
    `${dir}/nginx.conf`,
    `worker_processes ${workers};
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  ${temp}
  upstream worker { ${servers.join(" ")} keepalive 64; }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://worker;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
`,
  );
  const proc = new Deno.Command("nginx", {
    args: ["-p", dir, "-c", `${dir}/nginx.conf`],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const deadline = Date.now() + 10_000;
  while (!(await listening(port))) {
    if (Date.now() > deadline) throw new Error("nginx did not start");
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url: `http://127.0.0.1:${port}`,
    pids: async () => [proc.pid, ...await childPids(proc.pid)],
    async stop() {
      proc.kill("SIGTERM");
      await proc.stderr.cancel();
      await proc.status;
      await Deno.remove(dir, { recursive: true });
    },
  };
}
