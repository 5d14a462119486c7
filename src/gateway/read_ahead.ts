/**
 * Reading a worker's streamed answer ahead of a caller who takes it slowly
 * (or not at all), as a buffering proxy does (nginx's `proxy_buffering`):
 * the worker's answer is read as fast as the worker sends it, up to
 * {@linkcode READ_AHEAD_PER_CALL} bytes ahead of the caller, so that an answer
 * that fits is read to its end and its worker's slot goes back then, not when
 * the caller has taken the last byte. What a gateway holds so for all its
 * calls together is bounded by a {@linkcode ReadAheadBudget}
 * (`GATEWAY_READ_AHEAD_MB`); past it, and past a call's own share, an answer
 * is read only as its caller takes it, as without reading ahead. A caller who
 * reads as fast as the worker writes sees no difference but one more read
 * under way.
 *
 * @module
 */

/** What a gateway's calls may hold read ahead together, unless configured (bytes). */
export const DEFAULT_READ_AHEAD_BYTES = 64 * 1024 * 1024;

/**
 * How far at most one call's answer is read ahead of its caller (bytes):
 * with the sockets' own buffers (a few MB), an answer of about 10 MB (an
 * image, a batch of embeddings) frees its worker before a slow caller has
 * it, while one caller cannot take all of the budget.
 */
export const READ_AHEAD_PER_CALL = 8 * 1024 * 1024;

/**
 * The bytes the answers of a gateway's calls may hold read ahead of their
 * callers, all together.
 */
export class ReadAheadBudget {
  /** The most bytes held. */
  readonly limit: number;
  #held = 0;
  #waiting = new Set<() => void>();

  constructor(limit: number) {
    this.limit = limit;
  }

  /** Bytes held now. */
  get held(): number {
    return this.#held;
  }

  /** Calls waiting for room. */
  get waiting(): number {
    return this.#waiting.size;
  }

  /** Whether another piece may be read ahead (the last may go past the limit by its size). */
  get open(): boolean {
    return this.#held < this.limit;
  }

  take(n: number): void {
    this.#held += n;
  }

  give(n: number): void {
    this.#held -= n;
    if (!this.open || !this.#waiting.size) return;
    const waiting = [...this.#waiting];
    this.#waiting.clear();
    for (const wake of waiting) wake();
  }

  /** Runs `wake` once, when the budget has room again. */
  onFreed(wake: () => void): void {
    this.#waiting.add(wake);
  }

  /** Takes back `wake` (woken otherwise meanwhile). */
  forget(wake: () => void): void {
    this.#waiting.delete(wake);
  }
}

/**
 * One answer read ahead of its caller: {@linkcode ReadAhead.read} hands out
 * what was read, in order; `onEnd` runs once the worker's answer has been
 * read whole (before the caller may have all of it).
 */
export class ReadAhead {
  readonly #source: () => Promise<Uint8Array | null>;
  readonly #budget: ReadAheadBudget;
  readonly #onEnd: () => void;
  readonly #perCall: number;
  #queue: Uint8Array[] = [];
  #head = 0;
  #queued = 0;
  #ended = false;
  #stopped = false;
  #failed = false;
  #error: unknown;
  /** The caller's read waiting for the next piece. */
  #wakeReader?: () => void;
  /** The pump waiting for room (its own, or the budget's). */
  #wakePump?: () => void;

  constructor(
    source: () => Promise<Uint8Array | null>,
    budget: ReadAheadBudget,
    onEnd: () => void,
    perCall = READ_AHEAD_PER_CALL,
  ) {
    this.#source = source;
    this.#budget = budget;
    this.#onEnd = onEnd;
    this.#perCall = perCall;
    this.#pump();
  }

  /** Bytes read and not yet handed out. */
  get queued(): number {
    return this.#queued;
  }

  /** The worker's answer was read whole. */
  get ended(): boolean {
    return this.#ended;
  }

  /**
   * The next piece of the answer; null at its end. Rejects as the source did,
   * and once it was given up ({@linkcode ReadAhead.stop}): as a read of a
   * connection closed under it, never as an end.
   */
  async read(): Promise<Uint8Array | null> {
    while (true) {
      if (this.#head < this.#queue.length) {
        const c = this.#queue[this.#head];
        this.#queue[this.#head++] = EMPTY;
        if (this.#head === this.#queue.length) this.#queue.length = this.#head = 0;
        this.#queued -= c.byteLength;
        this.#budget.give(c.byteLength);
        this.#wakePump?.();
        return c;
      }
      if (this.#failed) throw this.#error;
      if (this.#stopped) throw new Error("the answer was given up");
      if (this.#ended) return null;
      await new Promise<void>((resolve) => this.#wakeReader = resolve);
      this.#wakeReader = undefined;
    }
  }

  /** Gives up what is held (the caller is gone, or had enough); reading stops. */
  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#budget.give(this.#queued);
    this.#queue = [];
    this.#head = this.#queued = 0;
    this.#wakePump?.();
    this.#wakeReader?.();
  }

  /**
   * Reads the source while there is room: always when nothing is held for the
   * caller (then the caller is waiting, as without reading ahead); else while
   * this call's share and the budget allow.
   */
  async #pump(): Promise<void> {
    try {
      while (!this.#stopped) {
        if (this.#queued > 0 && (this.#queued >= this.#perCall || !this.#budget.open)) {
          await this.#room();
          continue;
        }
        const c = await this.#source();
        if (this.#stopped) return;
        if (c === null) {
          this.#ended = true;
          this.#onEnd();
          break;
        }
        this.#queue.push(c);
        this.#queued += c.byteLength;
        this.#budget.take(c.byteLength);
        this.#wakeReader?.();
      }
    } catch (err) {
      if (this.#stopped) return;
      this.#failed = true;
      this.#error = err;
    }
    this.#wakeReader?.();
  }

  /** Waits until the caller took a piece, the budget has room again, or reading stopped. */
  async #room(): Promise<void> {
    let wake!: () => void;
    await new Promise<void>((resolve) => {
      this.#wakePump = wake = resolve;
      if (!this.#budget.open) this.#budget.onFreed(resolve);
    });
    this.#wakePump = undefined;
    this.#budget.forget(wake);
  }
}

const EMPTY = new Uint8Array(0);
