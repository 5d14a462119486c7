/**
 * Live updates for the dashboard: {@linkcode ClusterEvents} follows pods,
 * nodes and functions through the state service's watch while at least one browser
 * listens (the first listener starts the watches, the last one gone stops
 * them), and {@linkcode eventStream} turns those changes into a
 * server-sent-events body for one caller, holding only what the caller may
 * read. A caller that goes away (the request's signal, or a failed write)
 * ends its stream and unsubscribes.
 *
 * @module
 */
import { logger } from "../common/log.ts";
import { decodeNode, decodePod } from "../model/cluster.ts";
import { type Informer, startInformer } from "../rpc/informer.ts";
import type { MetaClient, MetaRecord, ObjectRef } from "../rpc/types.ts";

const log = logger("gateway", "ui");

/** One change of a pod or a node. */
export type ClusterEvent =
  | {
    kind: "pod";
    op: "put" | "delete";
    id: string;
    tenant: string;
    namespace: string;
    func?: string;
    state?: string;
    standbyTier?: string;
    node?: string;
  }
  | { kind: "node"; op: "put" | "delete"; name: string; ready?: boolean }
  | { kind: "function"; op: "put" | "delete"; tenant: string; namespace: string; name: string };

type Listener = (ev: ClusterEvent) => void;

/** Pod, node and function changes, watched only while someone listens. */
export class ClusterEvents {
  readonly #meta: MetaClient;
  readonly #listeners = new Set<Listener>();
  #informers?: Promise<Informer[]>;
  /** While the first list is delivered: those are not changes. */
  #priming = false;
  /**
   * Each node's record as last seen, its heartbeat left out: a heartbeat
   * alone (every 2 s of every node) is no change a page shows.
   */
  readonly #nodes = new Map<string, string>();

  constructor(meta: MetaClient) {
    this.#meta = meta;
  }

  /** How many listen now. */
  get listeners(): number {
    return this.#listeners.size;
  }

  /** Whether the watches run. */
  get watching(): boolean {
    return this.#informers !== undefined;
  }

  /** Calls `fn` on every change from now on; resolves (to unsubscribe) once watching. */
  async subscribe(fn: Listener): Promise<() => void> {
    this.#listeners.add(fn);
    try {
      await (this.#informers ??= this.#start());
    } catch (err) {
      this.#unsubscribe(fn);
      throw err;
    }
    return () => this.#unsubscribe(fn);
  }

  #unsubscribe(fn: Listener): void {
    if (!this.#listeners.delete(fn) || this.#listeners.size) return;
    const running = this.#informers;
    this.#informers = undefined;
    this.#nodes.clear();
    running?.then((list) => list.forEach((i) => i.stop()), () => {});
  }

  async #start(): Promise<Informer[]> {
    this.#priming = true;
    const started: Informer[] = [];
    try {
      started.push(
        await startInformer(this.#meta, "pod", {
          upsert: (r) => this.#emit(() => podEvent("put", r)),
          remove: (ref) => this.#emit(() => podEvent("delete", ref)),
        }),
        await startInformer(this.#meta, "function", {
          upsert: (r) => this.#emit(() => functionEvent("put", r)),
          remove: (ref) => this.#emit(() => functionEvent("delete", ref)),
        }),
        await startInformer(this.#meta, "node", {
          upsert: (r) => this.#emit(() => this.#nodeChange(r)),
          remove: (ref) =>
            this.#emit(() => {
              this.#nodes.delete(ref.name);
              return { kind: "node", op: "delete", name: ref.name };
            }),
        }),
      );
    } catch (err) {
      for (const i of started) i.stop();
      this.#informers = undefined;
      throw err;
    } finally {
      this.#priming = false;
    }
    return started;
  }

  /** A node's event, or undefined when only its heartbeat moved. */
  #nodeChange(r: MetaRecord): ClusterEvent | undefined {
    const n = decodeNode(r.value);
    const seen = JSON.stringify({ ...n, heartbeat: 0 });
    if (this.#nodes.get(n.name) === seen) return undefined;
    this.#nodes.set(n.name, seen);
    return { kind: "node", op: "put", name: n.name, ready: n.ready };
  }

  #emit(make: () => ClusterEvent | undefined): void {
    if (!this.#priming && !this.#listeners.size) return;
    let ev: ClusterEvent | undefined;
    try {
      ev = make(); // while priming too: what nodes look like is learned then
    } catch (err) {
      log.warn("Ignoring a malformed object: {error}", { error: String(err) });
    }
    if (!ev || this.#priming) return;
    for (const fn of this.#listeners) fn(ev);
  }
}

function functionEvent(op: "put" | "delete", r: ObjectRef): ClusterEvent {
  return { kind: "function", op, tenant: r.tenant, namespace: r.namespace, name: r.name };
}

function podEvent(op: "put" | "delete", r: MetaRecord | ObjectRef): ClusterEvent {
  const base = { kind: "pod" as const, op, id: r.name, tenant: r.tenant, namespace: r.namespace };
  if (!("value" in r)) return base;
  const p = decodePod(r.value);
  return { ...base, func: p.func, state: p.state, standbyTier: p.standbyTier, node: p.node };
}

/** Options of {@linkcode eventStream}. */
export interface EventStreamOptions {
  /** Whether the caller may see this change. */
  visible(ev: ClusterEvent): boolean;
  /** Whether the caller's credential still holds (checked before each change and ping is sent). */
  stillAllowed(): boolean | Promise<boolean>;
  /** Ends the stream when aborted (the client went away). */
  signal?: AbortSignal;
  /** Time between keep-alive comments (ms). @default 15000 */
  pingMs?: number;
  /** Called once when the stream ends, whatever ended it. */
  onEnd?: () => void;
}

const enc = new TextEncoder();
const PING = enc.encode(": ping\n\n");

/** One server-sent event. */
function sse(event: string, data: unknown): Uint8Array {
  return enc.encode(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
}

/**
 * A server-sent-events body of the changes `events` sees that the caller may
 * see: `event: pod`, `event: node` and `event: function`, each with a JSON `data` line, a
 * comment every `pingMs`, and `event: bye` when the credential stops
 * holding (checked before anything is sent). Resolves once the watches run.
 */
export async function eventStream(
  events: ClusterEvents,
  opts: EventStreamOptions,
): Promise<ReadableStream<Uint8Array>> {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  let done = false;
  const queued: Uint8Array[] = [];
  const push = (chunk: Uint8Array) => {
    if (done) return;
    if (controller) controller.enqueue(chunk);
    else queued.push(chunk);
  };
  // Nothing goes out before a check of the credential begun after it came:
  // a key revoked or expired a moment ago gets no more changes (the pings
  // alone would let it hear them until the next one).
  let waiting: Uint8Array[] = [];
  let checking = false;
  const send = async (chunk: Uint8Array) => {
    waiting.push(chunk);
    if (checking) return;
    checking = true;
    while (waiting.length && !done) {
      const batch = waiting;
      waiting = [];
      if (!(await Promise.resolve(opts.stillAllowed()).catch(() => false))) {
        push(sse("bye", { reason: "The credential no longer holds" }));
        end();
        break;
      }
      for (const c of batch) push(c);
    }
    waiting = [];
    checking = false;
  };
  const unsubscribe = await events.subscribe((ev) => {
    if (opts.visible(ev)) send(sse(ev.kind, ev));
  });
  const ping = setInterval(() => send(PING), opts.pingMs ?? 15_000);
  function end() {
    if (done) return;
    done = true;
    opts.onEnd?.();
    clearInterval(ping);
    opts.signal?.removeEventListener("abort", end);
    unsubscribe();
    try {
      controller?.close();
    } catch {
      // already closed or cancelled
    }
  }
  if (opts.signal?.aborted) end();
  opts.signal?.addEventListener("abort", end);
  return new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
      c.enqueue(enc.encode("retry: 2000\n: watching pods, nodes and functions\n\n"));
      for (const q of queued.splice(0)) c.enqueue(q);
      if (done) c.close();
    },
    cancel: end,
  });
}
