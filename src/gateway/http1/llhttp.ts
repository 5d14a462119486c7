/**
 * HTTP/1.x parsing with llhttp — Node.js's own parser — in its WebAssembly
 * build (the one undici ships). One module instance per isolate holds every
 * parser; a parser reports what it finds to a {@linkcode ParserHandler} as
 * offsets into the caller's buffer, so the caller decides what to copy or
 * decode. Strict mode: no lenient flags, so conflicting `Content-Length` and
 * `Transfer-Encoding`, duplicate lengths, bare LF and bad chunk framing are
 * errors (the request-smuggling defences of Node's HTTP server).
 *
 * @module
 */
import simdWasm from "undici/lib/llhttp/llhttp_simd-wasm.js";
import plainWasm from "undici/lib/llhttp/llhttp-wasm.js";

/** llhttp's error numbers that callers look at. */
export const HPE = { OK: 0, PAUSED: 21, PAUSED_UPGRADE: 22 } as const;

/** What a parser reports. Offsets are into the `buf` given to {@linkcode Http1Parser.execute}. */
export interface ParserHandler {
  onMessageBegin(): void;
  /** A piece of the request target (may come in several pieces). */
  onUrl(buf: Uint8Array, start: number, end: number): void;
  /** A piece of the response's reason phrase. */
  onStatus(buf: Uint8Array, start: number, end: number): void;
  onHeaderField(buf: Uint8Array, start: number, end: number): void;
  onHeaderValue(buf: Uint8Array, start: number, end: number): void;
  /** 0: go on; 1: the message has no body (a response to HEAD); {@linkcode HPE}.PAUSED: stop here. */
  onHeadersComplete(): number;
  onBody(buf: Uint8Array, start: number, end: number): void;
  /** 0: go on; {@linkcode HPE}.PAUSED: stop after this message. */
  onMessageComplete(): number;
}

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
/** The parser whose `execute` is running (callbacks are synchronous). */
let current: Http1Parser | undefined;

function instance(): Exports {
  if (wasm) return wasm;
  let mod: WebAssembly.Module;
  try {
    mod = new WebAssembly.Module(simdWasm);
  } catch {
    mod = new WebAssembly.Module(plainWasm);
  }
  const span = (f: (p: Http1Parser, s: number, e: number) => void) =>
  (
    _p: number,
    at: number,
    len: number,
  ) => {
    const p = current!;
    const s = at - p.dataPtr + p.dataOffset;
    f(p, s, s + len);
    return 0;
  };
  const inst = new WebAssembly.Instance(mod, {
    env: {
      wasm_on_message_begin: () => (current!.handler.onMessageBegin(), 0),
      wasm_on_url: span((p, s, e) => p.handler.onUrl(p.data!, s, e)),
      wasm_on_status: span((p, s, e) => p.handler.onStatus(p.data!, s, e)),
      wasm_on_header_field: span((p, s, e) => p.handler.onHeaderField(p.data!, s, e)),
      wasm_on_header_value: span((p, s, e) => p.handler.onHeaderValue(p.data!, s, e)),
      wasm_on_headers_complete: () => current!.handler.onHeadersComplete(),
      wasm_on_body: span((p, s, e) => p.handler.onBody(p.data!, s, e)),
      wasm_on_message_complete: () => current!.handler.onMessageComplete(),
    },
  });
  wasm = inst.exports as unknown as Exports;
  wasm._initialize?.();
  return wasm;
}

/** Where input is copied for the parser: one growing region of WebAssembly memory. */
let inPtr = 0;
let inSize = 0;

const methodNames = new Map<number, string>();
const dec = new TextDecoder();

/** The outcome of one {@linkcode Http1Parser.execute}. */
export interface ExecResult {
  /** Bytes consumed from the given range. */
  consumed: number;
  /** 0, or an llhttp error number ({@linkcode HPE}.PAUSED when a callback paused). */
  error: number;
}

/** One llhttp parser: requests (a server's) or responses (a client's). */
export class Http1Parser {
  readonly handler: ParserHandler;
  readonly #ptr: number;
  /** For the callbacks: the buffer being parsed and where its bytes sit in wasm memory. */
  data?: Uint8Array;
  dataOffset = 0;
  dataPtr = 0;

  constructor(kind: "request" | "response", handler: ParserHandler) {
    this.handler = handler;
    this.#ptr = instance().llhttp_alloc(kind === "request" ? 1 : 2);
  }

  /** Parses `buf[start, end)`; stops early at a pause or an error. */
  execute(buf: Uint8Array, start: number, end: number): ExecResult {
    const w = wasm!;
    const len = end - start;
    if (len > inSize) {
      if (inPtr) w.free(inPtr);
      inSize = Math.max(len, 64 * 1024);
      inPtr = w.malloc(inSize);
    }
    new Uint8Array(w.memory.buffer, inPtr, len).set(buf.subarray(start, end));
    this.data = buf;
    this.dataOffset = start;
    this.dataPtr = inPtr;
    const prev = current;
    current = this;
    let error: number;
    try {
      error = w.llhttp_execute(this.#ptr, inPtr, len);
    } finally {
      current = prev;
      this.data = undefined;
    }
    if (error === 0) return { consumed: len, error };
    return { consumed: w.llhttp_get_error_pos(this.#ptr) - inPtr, error };
  }

  /** Continues after a pause. */
  resume(): void {
    wasm!.llhttp_resume(this.#ptr);
  }

  /** The peer closed: completes a message whose body runs to the end of the stream. */
  finish(): number {
    const prev = current;
    current = this;
    try {
      return wasm!.llhttp_finish(this.#ptr);
    } finally {
      current = prev;
    }
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

  get upgrade(): boolean {
    return wasm!.llhttp_get_upgrade(this.#ptr) === 1;
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

  free(): void {
    wasm!.llhttp_free(this.#ptr);
  }
}

function cString(ptr: number): string {
  if (!ptr) return "";
  const mem = new Uint8Array(wasm!.memory.buffer);
  let end = ptr;
  while (mem[end] !== 0) end++;
  return dec.decode(mem.subarray(ptr, end));
}
