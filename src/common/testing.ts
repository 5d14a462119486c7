/**
 * Helpers shared by tests: a test registrar that opens a fixture per case
 * and always disposes of it, an error-code assertion, and the sources' text
 * (for tests that check what configuration the code reads).
 *
 * @module
 */
import assert from "node:assert/strict";
import type { Clock, Ticker } from "./clock.ts";
import { InferxError } from "./errors.ts";
import type { PodInfo } from "../model/cluster.ts";
import { callId, type CallRecord, newCallKey } from "../model/call.ts";
import type { MetaClient } from "../rpc/types.ts";
import { configure, type LogRecord } from "@logtape/logtape";

/** Registers cases named `${prefix}: ${title}`, each with a fresh fixture. */
export function fixtureTests<F extends { dispose(): Promise<void> }>(
  prefix: string,
  open: () => Promise<F>,
  options: { ignore?: boolean } = {},
): (title: string, fn: (fixture: F) => Promise<void>) => void {
  return (title, fn) =>
    Deno.test({
      name: `${prefix}: ${title}`,
      ignore: options.ignore ?? false,
      sanitizeOps: false,
      sanitizeResources: false,
      fn: async () => {
        const f = await open();
        try {
          await fn(f);
        } finally {
          await f.dispose();
        }
      },
    });
}

/** For `assert.rejects`: the error is an `InferxError` with code `code`. */
export function hasCode(code: string): (err: unknown) => true {
  return (err: unknown) => {
    assert.ok(err instanceof InferxError, String(err));
    assert.equal(err.code, code, err.message);
    return true;
  };
}

/**
 * A clock and ticker that move only when told: `advance(ms)` runs every
 * call that falls due, in time order, with `now()` at its due time.
 */
export class ManualClock implements Clock, Ticker {
  #now: number;
  #seq = 0;
  #timers = new Map<number, { at: number; every?: number; fn: () => void }>();

  constructor(start = 1_000_000) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  every(ms: number, fn: () => void): () => void {
    return this.#add({ at: this.#now + ms, every: ms, fn });
  }

  after(ms: number, fn: () => void): () => void {
    return this.#add({ at: this.#now + ms, fn });
  }

  /** Calls scheduled and not yet run or cancelled (repeating ones included). */
  get pending(): number {
    return this.#timers.size;
  }

  /** Moves time on by `ms`, running what falls due. */
  advance(ms: number): void {
    const end = this.#now + ms;
    while (true) {
      let next: [number, { at: number; every?: number; fn: () => void }] | undefined;
      for (const e of this.#timers) if (e[1].at <= end && (!next || e[1].at < next[1].at)) next = e;
      if (!next) break;
      const [id, t] = next;
      this.#now = t.at;
      if (t.every) t.at += t.every;
      else this.#timers.delete(id);
      t.fn();
    }
    this.#now = end;
  }

  #add(t: { at: number; every?: number; fn: () => void }): () => void {
    const id = ++this.#seq;
    this.#timers.set(id, t);
    return () => this.#timers.delete(id);
  }
}

/** Creates tenant `t`, its namespace `n` and function `t/n/f`: `spec` over a minimal one. */
export async function createTestFunction(
  meta: MetaClient,
  spec: Record<string, unknown> = {},
): Promise<void> {
  const sys = { tenant: "system", namespace: "system" };
  await meta.create({ type: "tenant", ...sys, name: "t", object: {} });
  await meta.create({ type: "namespace", tenant: "t", namespace: "system", name: "n", object: {} });
  await meta.create({
    type: "function",
    tenant: "t",
    namespace: "n",
    name: "f",
    object: { image: "x", commands: ["x"], ...spec },
  });
}

/** Waits until `check` holds, failing with `what` after `timeoutMs` (default 15 s). */
export async function until(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 15_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A pod record of function `t/n/f` placed on `node`, to be started: `commands` run it. */
export function testPod(id: string, node: string, commands = ["x"]): PodInfo {
  return {
    id,
    tenant: "t",
    namespace: "n",
    func: "f",
    funcVersion: 1,
    node,
    cpuMillis: 100,
    memMB: 64,
    gpus: [],
    template: {
      image: "x",
      commands,
      envs: [],
      mounts: [],
      port: 8000,
      probe: "/",
      startupTimeoutS: 30,
    },
    desired: "Running",
    state: "Creating",
    createdAt: Date.now(),
  };
}

/** Creates tenant `tenant` and its namespace `namespace` through `meta`. */
export async function seedNamespace(
  meta: {
    create(
      input: {
        type: "tenant" | "namespace";
        tenant: string;
        namespace: string;
        name: string;
        object: unknown;
      },
    ): Promise<unknown>;
  },
  tenant: string,
  namespace: string,
): Promise<void> {
  await meta.create({
    type: "tenant",
    tenant: "system",
    namespace: "system",
    name: tenant,
    object: {},
  });
  await meta.create({
    type: "namespace",
    tenant,
    namespace: "system",
    name: namespace,
    object: {},
  });
}

/** Runs `fn` with a new temporary directory, removed afterwards whatever happens. */
export async function withTempDir(
  prefix: string,
  fn: (dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * Runs `fn` with a new tmpfs of `size` (`1m`) mounted on a temporary
 * directory, unmounted and removed afterwards: a file system to fill. Skips
 * `fn`, saying why, where none can be mounted (not root).
 */
export async function withTmpfs(size: string, fn: (dir: string) => Promise<void>): Promise<void> {
  if (Deno.uid() !== 0) return console.log("skipped: a file system to fill needs a tmpfs (root)");
  await withTempDir("inferx-tmpfs-", async (dir) => {
    const mount = await new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir],
    }).output().catch(() => undefined);
    if (!mount?.success) return console.log("skipped: cannot mount a tmpfs here");
    try {
      await fn(dir);
    } finally {
      await new Deno.Command("umount", { args: [dir] }).output();
    }
  });
}

/**
 * Fills the file system of `dir` (a tmpfs of {@linkcode withTmpfs}) with a
 * file `filler` but for `free` bytes; the filler's path, to remove for the
 * space back.
 */
export async function fillLeaving(dir: string, free: number): Promise<string> {
  const path = `${dir}/filler`;
  const filler = await Deno.open(path, { write: true, create: true });
  try {
    await (async () => {
      for (;;) await filler.write(new Uint8Array(64 * 1024));
    })().catch(() => {});
    const size = (await filler.stat()).size;
    await filler.truncate(Math.max(0, size - free));
  } finally {
    filler.close();
  }
  return path;
}

/**
 * A call of `tenant/namespace/f` as a gateway stores it (queued, body `{}`
 * in base64), with `fields` changed.
 */
export function testCall(
  tenant = "t",
  namespace = "n",
  fields: Partial<CallRecord> = {},
): CallRecord {
  const now = Date.now();
  return {
    id: callId(tenant, namespace, newCallKey()),
    tenant,
    namespace,
    func: "f",
    principal: "admin",
    route: `/funccall/${tenant}/${namespace}/f/x`,
    method: "POST",
    path: "/x",
    headers: [["content-type", "application/json"]],
    body: "e30=",
    status: "queued",
    maxAttempts: 3,
    attempts: [],
    acceptedAt: now,
    expiresAt: now + 60_000,
    ...fields,
  };
}

/** Whether `python3` runs here (tests that need it skip, saying so, where it does not). */
export function hasPython(): boolean {
  try {
    return new Deno.Command("python3", { args: ["-c", ""], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}

/**
 * A proxy to `port` whose `cut()` silently drops the traffic of the
 * connections open then (a peer host gone without a FIN or a RST), while new
 * connections pass.
 */
export function cuttableProxy(port: number) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const open: { cut: boolean; conns: Deno.Conn[] }[] = [];
  const pump = async (link: { cut: boolean }, from: Deno.Conn, to: Deno.Conn) => {
    const buf = new Uint8Array(65536);
    try {
      for (let n; (n = await from.read(buf)) !== null;) {
        if (!link.cut) await to.write(buf.subarray(0, n));
      }
    } catch { /* closed */ }
  };
  (async () => {
    for await (const c of listener) {
      const up = await Deno.connect({ hostname: "127.0.0.1", port });
      const link = { cut: false, conns: [c, up] };
      open.push(link);
      pump(link, c, up);
      pump(link, up, c);
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    cut: () => open.forEach((l) => l.cut = true),
    close() {
      listener.close();
      for (const l of open) for (const c of l.conns) c.close();
    },
  };
}

/**
 * The messages the platform logs from now on (`inferx` categories, info and
 * up), kept in memory for a test to read, until LogTape's `reset()`.
 */
export async function logLines(): Promise<string[]> {
  const lines: string[] = [];
  await configure({
    reset: true,
    sinks: { mem: (r: LogRecord) => lines.push(r.message.join("")) },
    loggers: [
      { category: ["inferx"], lowestLevel: "info", sinks: ["mem"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["mem"] },
    ],
  });
  return lines;
}

/**
 * A node's port as an unauthenticated role's listens (every address, a free
 * port), counting the connections it takes: what a fenced worker must not
 * reach. Close it with `listener.close()`.
 */
export function nodeListener(): { listener: Deno.TcpListener; port: number; accepted(): number } {
  const listener = Deno.listen({ hostname: "0.0.0.0", port: 0 });
  let accepted = 0;
  (async () => {
    for await (const c of listener) {
      accepted++;
      c.close();
    }
  })().catch(() => {});
  return { listener, port: listener.addr.port, accepted: () => accepted };
}
