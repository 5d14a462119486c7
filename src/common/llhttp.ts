/**
 * HTTP/1.x parsing with llhttp — Node.js's own parser — in its WebAssembly
 * build (the one undici ships). One module instance per isolate holds every
 * parser. A parser does not call back into JavaScript objects while it runs:
 * it records what it finds (a message beginning, spans of the target,
 * reason phrase, header names and values and body, the head's and the
 * message's end) as offsets into the caller's buffer in an event list the
 * caller reads afterwards. Strict mode: no lenient flags, so conflicting
 * `Content-Length` and `Transfer-Encoding`, duplicate lengths, bare LF and bad
 * chunk framing are errors (the request-smuggling defences of Node's server).
 *
 * @module
 */
import simdWasm from "undici/lib/llhttp/llhttp_simd-wasm.js";
import plainWasm from "undici/lib/llhttp/llhttp-wasm.js";

/** llhttp's error numbers that callers look at. */
export const HPE = { OK: 0, INVALID_METHOD: 6, PAUSED: 21, PAUSED_UPGRADE: 22 } as const;

/** The kinds of events in {@linkcode Http1Parser.events}. */
export const EV = {
  MESSAGE_BEGIN: 1,
  URL: 2,
  STATUS: 3,
  HEADER_FIELD: 4,
  HEADER_VALUE: 5,
  HEADERS_COMPLETE: 6,
  BODY: 7,
  MESSAGE_COMPLETE: 8,
} as const;

interface Exports {
  memory: WebAssembly.Memory;
  _initialize?: () => void;
  malloc(n: number): number;
  free(p: number): void;
  llhttp_alloc(type: number): number;
  llhttp_free(p: number): void;
  llhttp_execute(p: number, data: number, len: number): number;
  llhttp_finish(p: number): number;
  llhttp_resume(p: number): void;
  llhttp_resume_after_upgrade(p: number): void;
  llhttp_get_method(p: number): number;
  llhttp_get_http_major(p: number): number;
  llhttp_get_http_minor(p: number): number;
  llhttp_get_status_code(p: number): number;
  llhttp_get_upgrade(p: number): number;
  llhttp_should_keep_alive(p: number): number;
  llhttp_get_error_pos(p: number): number;
  llhttp_get_error_reason(p: number): number;
  llhttp_method_name(m: number): number;
  llhttp_message_needs_eof(p: number): number;
}

let wasm: Exports | undefined;

// The parser whose execute() is running: its event list, how wasm pointers
// map to the caller's buffer, and what its head's end answers.
let ev: Int32Array = new Int32Array(0);
let evLen = 0;
let shift = 0;
let headersAnswer = 0;

function record(type: number, at: number, len: number): number {
  if (evLen >= ev.length) return 24; // HPE_USER: cannot happen within MAX_EXECUTE; refuse if it does
  ev[evLen] = type;
  ev[evLen + 1] = at + shift;
  ev[evLen + 2] = len;
  evLen += 3;
  return 0;
}

function instance(): Exports {
  if (wasm) return wasm;
  let mod: WebAssembly.Module;
  try {
    mod = new WebAssembly.Module(simdWasm);
  } catch {
    mod = new WebAssembly.Module(plainWasm);
  }
  const inst = new WebAssembly.Instance(mod, {
    env: {
      wasm_on_message_begin: () => record(EV.MESSAGE_BEGIN, 0, 0),
      wasm_on_url: (_p: number, at: number, len: number) => record(EV.URL, at, len),
      wasm_on_status: (_p: number, at: number, len: number) => record(EV.STATUS, at, len),
      wasm_on_header_field: (_p: number, at: number, len: number) =>
        record(EV.HEADER_FIELD, at, len),
      wasm_on_header_value: (_p: number, at: number, len: number) =>
        record(EV.HEADER_VALUE, at, len),
      wasm_on_headers_complete: () => (record(EV.HEADERS_COMPLETE, 0, 0), headersAnswer),
      wasm_on_body: (_p: number, at: number, len: number) => record(EV.BODY, at, len),
      // Stop after each message: the caller decides when to read the next.
      wasm_on_message_complete: () => (record(EV.MESSAGE_COMPLETE, 0, 0), HPE.PAUSED),
    },
  });
  wasm = inst.exports as unknown as Exports;
  wasm._initialize?.();
  return wasm;
}

/** WebAssembly memory as bytes (made again when the memory grows). */
let memView: Uint8Array<ArrayBufferLike> = new Uint8Array(0);
/** Where input is copied for the parser: one region of WebAssembly memory. */
let inPtr = 0;
/** The most input one execute() takes: it bounds the events one call can record. */
export const MAX_EXECUTE = 16 * 1024;

const methodNames = new Map<number, string>();
const dec = new TextDecoder();

/** One llhttp parser: requests (a server's) or responses (a client's). */
export class Http1Parser {
  #ptr: number;
  /**
   * What the last {@linkcode execute} found: triples of (kind from
   * {@linkcode EV}, offset in the caller's buffer, length), `eventCount`
   * numbers of them.
   */
  events = new Int32Array(3 * 64);
  eventCount = 0;
  /** A response to HEAD: tell llhttp the message has no body. */
  noBody = false;

  constructor(kind: "request" | "response") {
    this.#ptr = instance().llhttp_alloc(kind === "request" ? 1 : 2);
  }

  /**
   * Parses `buf[start, end)`, at most {@linkcode MAX_EXECUTE} bytes of it;
   * stops after a message's end (error {@linkcode HPE}.PAUSED), at an error,
   * or when the input is used up. Returns llhttp's error number (0 when all
   * it took was consumed) and sets {@linkcode consumed}.
   */
  execute(buf: Uint8Array, start: number, end: number): number {
    const w = wasm!;
    const len = Math.min(end - start, MAX_EXECUTE);
    if (!inPtr) inPtr = w.malloc(MAX_EXECUTE);
    // Every event but three per message covers at least one byte: room for all.
    if (this.events.length < 3 * (len + 4)) this.events = new Int32Array(3 * (len + 4));
    if (memView.buffer !== w.memory.buffer) memView = new Uint8Array(w.memory.buffer);
    memView.set(start === 0 && len === buf.length ? buf : buf.subarray(start, start + len), inPtr);
    ev = this.events;
    evLen = 0;
    shift = start - inPtr;
    headersAnswer = this.noBody ? 1 : 0;
    const error = w.llhttp_execute(this.#ptr, inPtr, len);
    this.eventCount = evLen;
    this.consumed = error === 0 ? len : w.llhttp_get_error_pos(this.#ptr) - inPtr;
    return error;
  }

  /** Bytes the last {@linkcode execute} consumed. */
  consumed = 0;

  /** Continues after a pause. */
  resume(): void {
    wasm!.llhttp_resume(this.#ptr);
  }

  /** Continues as HTTP after a message asked for an upgrade that was not made. */
  resumeAfterUpgrade(): void {
    wasm!.llhttp_resume_after_upgrade(this.#ptr);
  }

  /** The peer closed: completes a message whose body runs to the end of the stream. */
  finish(): number {
    ev = this.events;
    evLen = 0;
    const r = wasm!.llhttp_finish(this.#ptr);
    this.eventCount = evLen;
    return r;
  }

  /** The request method, upper case. */
  get method(): string {
    const m = wasm!.llhttp_get_method(this.#ptr);
    let name = methodNames.get(m);
    if (name === undefined) methodNames.set(m, name = cString(wasm!.llhttp_method_name(m)));
    return name;
  }

  get httpMajor(): number {
    return wasm!.llhttp_get_http_major(this.#ptr);
  }

  get httpMinor(): number {
    return wasm!.llhttp_get_http_minor(this.#ptr);
  }

  get statusCode(): number {
    return wasm!.llhttp_get_status_code(this.#ptr);
  }

  /** Whether the connection may carry another message after this one. */
  get keepAlive(): boolean {
    return wasm!.llhttp_should_keep_alive(this.#ptr) === 1;
  }

  /** Whether this response's body runs until the connection closes. */
  get needsEof(): boolean {
    return wasm!.llhttp_message_needs_eof(this.#ptr) === 1;
  }

  /** llhttp's reason for the last error. */
  get errorReason(): string {
    return cString(wasm!.llhttp_get_error_reason(this.#ptr));
  }

  /** Gives the parser's memory back; once (a second call does nothing). */
  free(): void {
    if (!this.#ptr) return;
    wasm!.llhttp_free(this.#ptr);
    this.#ptr = 0;
  }
}

function cString(ptr: number): string {
  if (!ptr) return "";
  const mem = new Uint8Array(wasm!.memory.buffer);
  let end = ptr;
  while (mem[end] !== 0) end++;
  return dec.decode(mem.subarray(ptr, end));
}
