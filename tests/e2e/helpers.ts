/**
 * Helpers for end-to-end tests: start `main.ts` as a subprocess on a free
 * port with its own data directory, wait for it, stop it.
 *
 * @module
 */
import { freePort } from "../../src/common/net.ts";
import { PodCgroups } from "../../src/nodeagent/cgroup.ts";
import { scopeTag } from "../../src/nodeagent/mod.ts";
import { NGRAM_COMMANDS } from "../../src/samples/ngram/image.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;

/** A running platform process. */
export interface Platform {
  url: string;
  dataDir: string;
  proc: Deno.ChildProcess;
  /** Everything it printed so far. */
  output(): string;
  /** SIGTERM and wait for exit. */
  stop(): Promise<Deno.CommandStatus>;
  /**
   * Removes, once it has exited, the control groups of its pods, what is in them too: a
   * platform ended without its stop (SIGKILL, a second signal) leaves them to its next start,
   * which a test's may never get.
   */
  sweep(): Promise<void>;
}

/** A process running one role of `main.ts`. */
export interface RoleProcess {
  proc: Deno.ChildProcess;
  output(): string;
  /** SIGKILL, no goodbye. */
  kill(): Promise<void>;
  /** SIGTERM and wait for exit. */
  stop(): Promise<Deno.CommandStatus>;
}

/** How {@linkcode spawnRole} runs `main.ts`. */
export interface SpawnOptions {
  /** Flags for the runtime (`--v8-flags=...`). */
  runtimeArgs?: string[];
  /** Another checkout's `main.ts` (a benchmark's baseline). @default this checkout's */
  main?: string;
  /** In a session and process group of its own (`setsid`), as a terminal's foreground job is. */
  ownGroup?: boolean;
  /** Through `deno task start`, as the README starts it (`runtimeArgs` and `main` unused). */
  task?: boolean;
}

/** Starts `main.ts` with `env`, then waits until `ready()` says so (30 s at most). */
export async function spawnRole(
  env: Record<string, string>,
  ready: () => Promise<boolean>,
  options: SpawnOptions = {},
): Promise<RoleProcess> {
  const args = options.task
    ? ["task", "--quiet", "--config", new URL("../../deno.json", import.meta.url).pathname, "start"]
    : ["run", "-A", ...options.runtimeArgs ?? [], options.main ?? MAIN];
  // setsid execs it in place (a child is no group's leader yet): its pid leads the new group.
  const proc = new Deno.Command(options.ownGroup ? "setsid" : Deno.execPath(), {
    args: options.ownGroup ? [Deno.execPath(), ...args] : args,
    env: { INFERX_SAMPLES: "none", INFERX_RUNTIME: "process", ...env },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let out = "";
  const pump = async (s: ReadableStream<Uint8Array>) => {
    for await (const t of s.pipeThrough(new TextDecoderStream())) out += t;
  };
  const pumps = Promise.all([pump(proc.stdout), pump(proc.stderr)]);
  let exited = false;
  proc.status.then(() => exited = true);
  const deadline = Date.now() + 30_000;
  while (!(await ready().catch(() => false))) {
    if (exited || Date.now() > deadline) {
      if (!exited) proc.kill("SIGKILL");
      throw new Error(`${env.RUN_SERVICE ?? "All"} did not get ready:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    proc,
    output: () => out,
    async kill() {
      if (!exited) proc.kill("SIGKILL");
      await proc.status;
      await pumps;
    },
    async stop() {
      if (!exited) proc.kill("SIGTERM");
      const status = await proc.status;
      await pumps;
      return status;
    },
  };
}

/** Whether something accepts TCP connections on 127.0.0.1:`port`. */
export async function listening(port: number): Promise<boolean> {
  try {
    const c = await Deno.connect({ hostname: "127.0.0.1", port });
    c.close();
    return true;
  } catch {
    return false;
  }
}

/** Starts `RUN_SERVICE=All` with `env` on a free port and waits for /health. */
export async function startPlatform(
  env: Record<string, string> = {},
  dataDir?: string,
  options: SpawnOptions = {},
): Promise<Platform> {
  const port = freePort();
  const dir = dataDir ?? await Deno.makeTempDir({ prefix: "inferx-e2e-" });
  const url = `http://127.0.0.1:${port}`;
  // Its node agent's scope: the control groups of its pods are named after it.
  const tag = scopeTag(`${env.NODE_NAME ?? "node1"}@${await Deno.realPath(dir)}`);
  const role = await spawnRole(
    { GATEWAY_PORT: String(port), INFERX_DATA_DIR: dir, ...env },
    async () => (await fetch(`${url}/health`).then((r) => (r.body?.cancel(), r.ok))),
    options,
  );
  return {
    url,
    dataDir: dir,
    proc: role.proc,
    output: role.output,
    stop: role.stop,
    async sweep() {
      if (Deno.uid() === 0) await PodCgroups.sweepLeftBehind(tag).catch(() => {});
    },
  };
}

/** A parsed JSON answer; tests read arbitrary answers field by field. */
// deno-lint-ignore no-explicit-any
export type Json = any;

/** JSON request helper: returns status, headers and parsed body. */
export async function request(
  url: string,
  init: { method?: string; body?: unknown; headers?: Record<string, string> } = {},
): Promise<{ status: number; headers: Headers; body: Json }> {
  const res = await fetch(url, {
    method: init.method ?? (init.body === undefined ? "GET" : "POST"),
    headers: { "content-type": "application/json", ...init.headers },
    body: init.body === undefined
      ? undefined
      : typeof init.body === "string"
      ? init.body
      : JSON.stringify(init.body),
  });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON (e.g. server-sent events)
  }
  return { status: res.status, headers: res.headers, body };
}

/** What a `ctl` run printed, and its exit status. */
export interface CtlResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `main.ts ctl --gateway URL ...args` as a user types it; `stdin` is typed into it. */
export async function ctl(gateway: string, args: string[], stdin = ""): Promise<CtlResult> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "ctl", "--gateway", gateway, ...args],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = child.stdin.getWriter();
  await w.write(new TextEncoder().encode(stdin)).catch(() => {});
  await w.close().catch(() => {});
  const out = await child.output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

/** Creates an object through the gateway at `url` (`PUT /object/`), with `headers` (credentials). */
export function putObject(
  url: string,
  object: unknown,
  headers?: Record<string, string>,
): ReturnType<typeof request> {
  return request(`${url}/object/`, { method: "PUT", body: object, headers });
}

/** Creates tenant `tenant` and its namespace `namespace` through the gateway at `url`. */
export async function createNamespace(
  url: string,
  tenant: string,
  namespace: string,
  headers?: Record<string, string>,
): Promise<void> {
  for (
    const o of [
      { type: "tenant", tenant: "system", namespace: "system", name: tenant, object: {} },
      { type: "namespace", tenant, namespace: "system", name: namespace, object: {} },
    ]
  ) {
    const r = await putObject(url, o, headers);
    if (r.status !== 201) {
      throw new Error(`Cannot create ${o.type} ${o.name}: ${JSON.stringify(r.body)}`);
    }
  }
}

/** Polls `check` every 100 ms until it returns true or `timeoutMs` passes. */
export async function eventually(
  what: string,
  check: () => Promise<boolean>,
  timeoutMs = 15_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A function object running the n-gram sample; `spec` fields replace the defaults. */
export function ngramFunction(
  tenant: string,
  namespace: string,
  name: string,
  spec: Record<string, unknown> = {},
) {
  return {
    type: "function",
    tenant,
    namespace,
    name,
    object: {
      spec: {
        image: "inferx/ngram",
        commands: NGRAM_COMMANDS,
        resources: { CPU: 300, Mem: 256 },
        ...spec,
      },
    },
  };
}
