/**
 * Larger JSON call bodies read off the event loop. The gateway reads a call's
 * JSON body for a few top-level fields (`model`, `max_tokens`) and to refuse
 * one that is not JSON; `JSON.parse` cannot be interrupted and takes about
 * 25 ms a MiB of numbers, more for keys (a 16 MiB body: 0.4 to 1.4 s in which
 * no other call is served). A body past {@linkcode OFF_THREAD_BYTES} is
 * counted and parsed in a worker thread of its own, which sends back only
 * those fields: the event loop copies the bytes and goes on. Smaller bodies
 * (a few ms to parse at most) are read at once, on the loop, where a
 * thread's round trip would cost more than the parse.
 *
 * @module
 */
import { InferxError } from "../common/errors.ts";
import { jsonText, jsonTooHeavy, MAX_JSON_ITEMS } from "../common/json.ts";

/** Bodies larger than this (bytes) are parsed in the worker. */
export const OFF_THREAD_BYTES = 64 * 1024;

/** Only a body's own bytes, to send to the probe (a view's whole buffer would be copied). */
export const ownBytes = (bytes: Uint8Array): Uint8Array =>
  bytes.byteLength === bytes.buffer.byteLength ? bytes : bytes.slice();

/** The top-level fields a call's JSON body is read for (strings, numbers and booleans only). */
export const CALL_FIELDS = ["model", "max_tokens", "max_completion_tokens", "stream"] as const;

/** A call's {@linkcode CALL_FIELDS} its body has. */
export type CallFields = Record<string, string | number | boolean>;

/** What the worker found: the fields, or why the body is refused. */
export type ProbeResult =
  | { ok: true; fields: CallFields }
  | { ok: false; heavy?: string; invalid?: string };

/** What an object write's body reads as: its JSON text without whitespace, or why it is refused. */
export type ObjectResult =
  | { ok: true; text: string }
  | { ok: false; heavy?: string; invalid?: string; chars?: number };

/** Bounds of an object write's body, sent with it (the worker imports no schema). */
export interface ObjectBounds {
  /** The deepest arrays and objects may nest. */
  maxDepth: number;
  /** The most characters its JSON may take without whitespace. */
  maxChars: number;
}

/**
 * A request to the worker: a call's body, an object write's with its bounds, or (`check`) an
 * answer to be shown, whose JSON is only checked.
 */
export interface ProbeRequest {
  id: number;
  bytes: Uint8Array;
  object?: ObjectBounds;
  check?: boolean;
}

/** The worker's answer to {@linkcode ProbeRequest} `id`. */
export type ProbeReply = (ProbeResult | ObjectResult) & { id: number };

/**
 * `bytes` as JSON text, counted (see `jsonTooHeavy`) and parsed; of what it
 * holds, the {@linkcode CALL_FIELDS} of a top-level object that are strings,
 * numbers or booleans (what the gateway reads of any other value is what it
 * reads of none). The same code runs on the loop and in the worker.
 */
export function probeJson(bytes: Uint8Array): ProbeResult {
  const read = countedParse(bytes, MAX_JSON_ITEMS);
  if (!("json" in read)) return { ok: false, ...read };
  const json = read.json;
  const fields: CallFields = {};
  if (json && typeof json === "object" && !Array.isArray(json)) {
    for (const k of CALL_FIELDS) {
      const v = (json as Record<string, unknown>)[k];
      if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") fields[k] = v;
    }
  }
  return { ok: true, fields };
}

/**
 * Whether `bytes` are JSON text, parsed whatever they hold (an answer a worker sent, to be shown
 * as it is: in the worker, where its parse holds up no call); no fields are read.
 */
export function checkJson(bytes: Uint8Array): ProbeResult {
  try {
    JSON.parse(jsonText(bytes));
    return { ok: true, fields: {} };
  } catch (err) {
    return { ok: false, invalid: (err as Error).message };
  }
}

/**
 * An object write's body `bytes`, counted (see `jsonTooHeavy`), parsed and
 * written again without whitespace: what the event loop then parses is at
 * most `maxChars` long, however the body was laid out (4 MiB of numbers took
 * 60 ms to parse and 50 more to collect). Refused past `maxChars`: a stored
 * object is no smaller than that text (the `status` a writer may send, which
 * the route drops, left out).
 */
export function compactObject(bytes: Uint8Array, bounds: ObjectBounds): ObjectResult {
  const read = countedParse(bytes, bounds.maxDepth);
  if (!("json" in read)) return { ok: false, ...read };
  // A writer's `status` is dropped by the route: it neither counts nor goes back.
  if (isRecord(read.json)) read.json.object = withoutStatus(read.json.object);
  const text = JSON.stringify(read.json);
  return text.length > bounds.maxChars ? { ok: false, chars: text.length } : { ok: true, text };
}

const isRecord = (v: unknown): v is Record<string, unknown> =>
  !!v && typeof v === "object" && !Array.isArray(v);

/**
 * An object write's `object` without the `status` beside its spec: the
 * platform's to write (the scheduler's conditions), never a writer's.
 */
export function withoutStatus(object: unknown): unknown {
  if (!isRecord(object) || !("spec" in object)) return object;
  const { status: _, ...rest } = object;
  return rest;
}

/** `bytes` parsed as JSON once `jsonTooHeavy` has counted them (`maxDepth`), or why not. */
function countedParse(
  bytes: Uint8Array,
  maxDepth: number,
): { json: unknown } | { heavy: string } | { invalid: string } {
  const heavy = jsonTooHeavy(bytes, maxDepth);
  if (heavy) return { heavy };
  try {
    return { json: JSON.parse(jsonText(bytes)) };
  } catch (err) {
    return { invalid: (err as Error).message };
  }
}

/**
 * The worker that parses large bodies, started at the first one and ended by
 * {@linkcode JsonProbe.close} (the gateway's stop). Bodies are parsed one at a
 * time, in order; a worker that dies fails what waited on it (503
 * `unavailable`: the call went to no worker, the object was not written),
 * and the next body starts another.
 */
export class JsonProbe {
  #worker?: Worker;
  #pending = new Map<
    number,
    { resolve: (r: ProbeResult | ObjectResult) => void; reject: (e: Error) => void }
  >();
  #seq = 0;
  #closed = false;

  /** What `bytes` holds, read in the worker (a copy of them goes there). */
  probe(bytes: Uint8Array): Promise<ProbeResult> {
    return this.#ask({ id: 0, bytes }) as Promise<ProbeResult>;
  }

  /** {@linkcode checkJson} of `bytes`, in the worker. */
  check(bytes: Uint8Array): Promise<ProbeResult> {
    return this.#ask({ id: 0, bytes, check: true }) as Promise<ProbeResult>;
  }

  /** {@linkcode compactObject} of `bytes`, in the worker. */
  object(bytes: Uint8Array, bounds: ObjectBounds): Promise<ObjectResult> {
    return this.#ask({ id: 0, bytes, object: bounds }) as Promise<ObjectResult>;
  }

  #ask(req: ProbeRequest): Promise<ProbeResult | ObjectResult> {
    if (this.#closed) return Promise.reject(unavailable("the gateway is stopping"));
    const w = this.#worker ??= this.#start();
    const id = ++this.#seq;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      w.postMessage({ ...req, id } satisfies ProbeRequest);
    });
  }

  /** Bodies sent to the worker and not answered yet. */
  get pending(): number {
    return this.#pending.size;
  }

  #start(): Worker {
    const w = new Worker(new URL("./_json_probe_worker.ts", import.meta.url).href, {
      type: "module",
    });
    w.onmessage = (e: MessageEvent<ProbeReply>) => {
      const p = this.#pending.get(e.data.id);
      this.#pending.delete(e.data.id);
      const { id: _, ...result } = e.data;
      p?.resolve(result);
    };
    w.onerror = (e: ErrorEvent) => {
      e.preventDefault();
      this.#stop(`the thread that reads large bodies stopped (${e.message})`);
    };
    return w;
  }

  #stop(why: string): void {
    this.#worker?.terminate();
    this.#worker = undefined;
    for (const p of this.#pending.values()) p.reject(unavailable(why));
    this.#pending.clear();
  }

  /** Ends the worker; bodies still waiting are refused. */
  close(): void {
    this.#closed = true;
    this.#stop("the gateway is stopping");
  }
}

function unavailable(why: string): InferxError {
  return new InferxError(
    "unavailable",
    `The request's body could not be read: ${why}; nothing was done with it (no worker called, no object written), try again`,
    { retryable: true },
  );
}
