/**
 * A small client of V8's inspector protocol (Chrome DevTools Protocol) for
 * benchmarks: a process run with `--inspect=127.0.0.1:PORT` lets it run a
 * full garbage collection in every isolate of the process — the main
 * thread's and each web worker's (attached through `Target.setAutoAttach`,
 * one session each) — and read what each heap holds after it. A soak that
 * waits for V8 to collect on its own may wait forever: V8 may run no full
 * collection at all in a quarter of an hour, and its old generation then
 * holds every object ever promoted, garbage included. What survives a full
 * collection is what the process keeps.
 *
 * ```sh
 * deno run -A bench/inspector.ts PORT   # collect once, print each isolate's heap
 * ```
 *
 * @module
 */

/** One isolate's heap after a full collection (bytes). */
export interface IsolateHeap {
  /** `main`, or the worker's title (`worker [1]`). */
  isolate: string;
  used: number;
  total: number;
}

interface Reply {
  id?: number;
  method?: string;
  params?: { sessionId?: string; targetInfo?: { title?: string } };
  result?: Record<string, unknown>;
  error?: { message: string };
  sessionId?: string;
}

/** A connection to the inspector of one process. */
export class Inspector {
  readonly #ws: WebSocket;
  #id = 0;
  readonly #pending = new Map<number, { resolve(r: Reply): void; reject(e: Error): void }>();
  /** Worker sessions: session id to the worker's title. */
  readonly #workers = new Map<string, string>();
  /** Heap snapshot chunks being received, by session ("" for the main isolate). */
  readonly #chunks = new Map<string, string[]>();

  private constructor(ws: WebSocket) {
    this.#ws = ws;
    ws.onmessage = (e) => {
      const m: Reply = JSON.parse(e.data);
      if (m.method === "Target.attachedToTarget" && m.params?.sessionId) {
        this.#workers.set(m.params.sessionId, m.params.targetInfo?.title ?? m.params.sessionId);
      } else if (m.method === "Target.detachedFromTarget" && m.params?.sessionId) {
        this.#workers.delete(m.params.sessionId);
      }
      if (m.method === "HeapProfiler.addHeapSnapshotChunk") {
        this.#chunks.get(m.sessionId ?? "")?.push((m.params as { chunk: string }).chunk);
      }
      const p = m.id === undefined ? undefined : this.#pending.get(m.id);
      if (!p) return;
      this.#pending.delete(m.id!);
      if (m.error) p.reject(new Error(`inspector: ${m.error.message}`));
      else p.resolve(m);
    };
    ws.onclose = () => {
      for (const p of this.#pending.values()) p.reject(new Error("inspector: connection closed"));
      this.#pending.clear();
    };
  }

  /** Connects to the process listening for an inspector on 127.0.0.1:`port`, workers attached. */
  static async connect(port: number): Promise<Inspector> {
    const res = await fetch(`http://127.0.0.1:${port}/json/list`);
    const targets: { webSocketDebuggerUrl: string }[] = await res.json();
    if (!targets.length) throw new Error(`No inspector target on 127.0.0.1:${port}`);
    const ws = new WebSocket(targets[0].webSocketDebuggerUrl);
    await new Promise<void>((resolve, reject) => {
      ws.onopen = () => resolve();
      ws.onerror = () => reject(new Error(`Cannot open the inspector on 127.0.0.1:${port}`));
    });
    const inspector = new Inspector(ws);
    await inspector.send("Target.setAutoAttach", {
      autoAttach: true,
      waitForDebuggerOnStart: false,
      flatten: true,
    });
    await new Promise((r) => setTimeout(r, 200)); // the workers' attach events, sent after the reply
    return inspector;
  }

  /** Sends one command (to a worker's session when `session` is given); its result. */
  send(method: string, params: Record<string, unknown> = {}, session?: string): Promise<Reply> {
    const id = ++this.#id;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#ws.send(JSON.stringify({ id, method, params, sessionId: session }));
    });
  }

  /** Runs a full collection in every isolate, one after another; each one's heap after it. */
  async collect(): Promise<IsolateHeap[]> {
    const out: IsolateHeap[] = [];
    for (const [isolate, session] of this.isolates()) {
      await this.send("HeapProfiler.collectGarbage", {}, session);
      const u = (await this.send("Runtime.getHeapUsage", {}, session)).result!;
      out.push({ isolate, used: Number(u.usedSize), total: Number(u.totalSize) });
    }
    return out;
  }

  /**
   * A heap snapshot of one isolate (the main one unless `session` names a
   * worker's), summed by kind of object: for each constructor (or type, for
   * strings, arrays, code, ...), how many and their own bytes. Taking it
   * runs a full collection first, so it counts what is kept.
   */
  async heapByKind(session?: string): Promise<Map<string, HeapKind>> {
    const chunks: string[] = [];
    this.#chunks.set(session ?? "", chunks);
    try {
      await this.send("HeapProfiler.takeHeapSnapshot", { reportProgress: false }, session);
    } finally {
      this.#chunks.delete(session ?? "");
    }
    return summarize(JSON.parse(chunks.join("")));
  }

  /** The main isolate and the workers' sessions, as `heapByKind` and `collect` name them. */
  isolates(): [string, string | undefined][] {
    return [["main", undefined], ...[...this.#workers].map(([s, t]) => [t, s] as [string, string])];
  }

  close(): void {
    this.#ws.close();
  }
}

/** Objects of one kind in a heap snapshot. */
export interface HeapKind {
  count: number;
  bytes: number;
}

interface Snapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[], ...unknown[]] } };
  nodes: number[];
  strings: string[];
}

/**
 * A heap snapshot's objects summed by kind: objects by constructor name
 * (`object: Map`), everything else by its type (`string`, `array`, `code`,
 * `closure: name`, ...).
 */
export function summarize(snap: Snapshot): Map<string, HeapKind> {
  const fields = snap.snapshot.meta.node_fields;
  const types = snap.snapshot.meta.node_types[0];
  const [TYPE, NAME, SIZE] = ["type", "name", "self_size"].map((f) => fields.indexOf(f));
  const out = new Map<string, HeapKind>();
  const stride = fields.length;
  for (let i = 0; i < snap.nodes.length; i += stride) {
    const type = types[snap.nodes[i + TYPE]];
    const named = type === "object" || type === "closure" || type === "native";
    const key = named ? `${type}: ${snap.strings[snap.nodes[i + NAME]]}` : type;
    const k = out.get(key) ?? { count: 0, bytes: 0 };
    k.count++;
    k.bytes += snap.nodes[i + SIZE];
    out.set(key, k);
  }
  return out;
}

/** The kinds of objects that grew most in bytes from `before` to `after`, as table lines. */
export function heapGrowth(
  before: Map<string, HeapKind>,
  after: Map<string, HeapKind>,
  top = 15,
): string[] {
  const rows = [...new Set([...before.keys(), ...after.keys()])].map((kind) => {
    const [b, a] = [before.get(kind), after.get(kind)];
    return {
      kind,
      count: (a?.count ?? 0) - (b?.count ?? 0),
      bytes: (a?.bytes ?? 0) - (b?.bytes ?? 0),
      now: a?.count ?? 0,
    };
  }).sort((x, y) => y.bytes - x.bytes).slice(0, top);
  return [
    "| kind of object | more objects | more bytes | objects now |",
    "| --- | ---: | ---: | ---: |",
    ...rows.map((r) =>
      `| ${r.kind.replaceAll("|", "\\|").slice(0, 80)} | ${r.count} | ${r.bytes} | ${r.now} |`
    ),
  ];
}

if (import.meta.main) {
  const port = Number(Deno.args[0]);
  if (!(port > 0)) throw new Error("Usage: deno run -A bench/inspector.ts PORT");
  const inspector = await Inspector.connect(port);
  for (const h of await inspector.collect()) {
    console.log(
      `${h.isolate}: ${(h.used / 1048576).toFixed(1)} MB in use of ${
        (h.total / 1048576).toFixed(1)
      } MB after a full collection`,
    );
  }
  inspector.close();
}
