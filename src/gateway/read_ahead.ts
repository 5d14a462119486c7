/**
 * Reading a worker's streamed answer ahead of a caller who takes it slowly
 * (or not at all), as a buffering proxy does (nginx's `proxy_buffering`):
 * the worker's answer is read as fast as the worker sends it, up to
 * {@linkcode READ_AHEAD_PER_CALL} bytes in memory ahead of the caller, and
 * past that into a file of its own on disk (nginx's temporary files), up to
 * {@linkcode SPILL_PER_CALL} bytes, so that its worker's slot goes back when
 * the worker is done, not when the caller has taken the last byte. What a
 * gateway holds so for all its calls together is bounded by a
 * {@linkcode ReadAheadBudget}, in memory (`GATEWAY_READ_AHEAD_MB`) and on
 * disk (`GATEWAY_SPILL_MB`); past both, an answer is read only as its caller
 * takes it, as without reading ahead. A caller who reads as fast as the
 * worker writes sees no difference but one more read under way.
 *
 * A spill file is unlinked as soon as it is open (nothing is left behind by
 * a crash), written at its end and read from its start, both in order; it is
 * closed, and its room given back, whenever the caller has caught up with it
 * (a later spill of the call opens another).
 *
 * @module
 */

import { logger } from "../common/log.ts";

const log = logger("gateway");

/** What a gateway's calls may hold read ahead together, unless configured (bytes). */
export const DEFAULT_READ_AHEAD_BYTES = 64 * 1024 * 1024;

/**
 * How far at most one call's answer is read ahead of its caller (bytes):
 * with the sockets' own buffers (a few MB), an answer of about 10 MB (an
 * image, a batch of embeddings) frees its worker before a slow caller has
 * it, while one caller cannot take all of the budget.
 */
export const READ_AHEAD_PER_CALL = 8 * 1024 * 1024;

/** How far at most one call's answer is read ahead of its caller on disk (bytes). */
export const SPILL_PER_CALL = 256 * 1024 * 1024;

/** What a gateway's calls may hold on disk together, unless configured (bytes). */
export const DEFAULT_SPILL_BYTES = 1024 * 1024 * 1024;

/** Where, and how much, answers read ahead go on disk past memory. */
export interface SpillOptions {
  /** A directory of the gateway's own (made when missing). */
  dir: string;
  /** The most bytes all calls hold there together. */
  limit: number;
  /** The most one call holds there. @default SPILL_PER_CALL */
  perCall?: number;
}

/**
 * The bytes the answers of a gateway's calls may hold read ahead of their
 * callers, all together: in memory, and on disk when `spill` is given.
 */
export class ReadAheadBudget {
  /** The most bytes held in memory. */
  readonly limit: number;
  readonly spill?: Readonly<SpillOptions>;
  #held = 0;
  #spilled = 0;
  /** Calls waiting for room in memory, and on disk (one may wait for either). */
  #waitingMemory = new Set<() => void>();
  #waitingDisk = new Set<() => void>();

  constructor(limit: number, spill?: SpillOptions) {
    this.limit = limit;
    if (spill && spill.limit > 0) this.spill = spill;
  }

  /** Bytes held in memory now. */
  get held(): number {
    return this.#held;
  }

  /** Bytes held on disk now (the spill files' sizes). */
  get spilled(): number {
    return this.#spilled;
  }

  /** Whether `n` more bytes may go to disk. */
  spillRoom(n: number): boolean {
    return this.spill !== undefined && this.#spilled + n <= this.spill.limit;
  }

  /** Takes `n` bytes on disk (before the file is open or written: others see them taken). */
  takeSpill(n: number): void {
    this.#spilled += n;
  }

  #spillWarned = 0;

  /** A spill failed (the disk full, the directory unusable): said at most once a minute. */
  spillFailed(err: unknown): void {
    const now = performance.now();
    if (this.#spillWarned && now - this.#spillWarned < 60_000) return;
    this.#spillWarned = now;
    log.warn("Cannot spill an answer read ahead to {dir}: {error}; it is held in memory", {
      dir: this.spill?.dir,
      error: String(err),
    });
  }

  giveSpill(n: number): void {
    if (n === 0) return;
    this.#spilled -= n;
    wakeAll(this.#waitingDisk);
  }

  /** Calls waiting for room. */
  get waiting(): number {
    let n = this.#waitingMemory.size;
    for (const w of this.#waitingDisk) if (!this.#waitingMemory.has(w)) n++;
    return n;
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
    if (this.open) wakeAll(this.#waitingMemory);
  }

  /**
   * Runs `wake` when the budget has room again: in memory, on disk, or
   * either. Only calls that wait on the budget itself are woken by it, not
   * those waiting for their own callers.
   */
  onFreed(wake: () => void, on: { memory: boolean; disk: boolean }): void {
    if (on.memory) this.#waitingMemory.add(wake);
    if (on.disk) this.#waitingDisk.add(wake);
  }

  /** Takes back `wake` (woken otherwise meanwhile). */
  forget(wake: () => void): void {
    this.#waitingMemory.delete(wake);
    this.#waitingDisk.delete(wake);
  }
}

/** Wakes every call in `waiting` (each looks again, and waits again when there is no room). */
function wakeAll(waiting: Set<() => void>): void {
  if (!waiting.size) return;
  const woken = [...waiting];
  waiting.clear();
  for (const wake of woken) wake();
}

/** Bytes of an answer on disk, in order among the pieces held in memory. */
interface Extent {
  left: number;
}

/** How much of a spill file one read hands out at most. */
const SPILL_READ = 64 * 1024;

/** A call's spill file: unlinked, written at its end by one handle, read in order by another. */
interface SpillFile {
  writer: Deno.FsFile;
  reader: Deno.FsFile;
  /** Bytes in the file (written, read or not), as taken from the budget. */
  size: number;
}

/**
 * One answer read ahead of its caller: {@linkcode ReadAhead.read} hands out
 * what was read, in order, from memory or from its spill file; `onDone` runs
 * once the worker is done with it (before the caller may have all of it):
 * the answer read whole, or its reading failed (the worker broke it off,
 * or went quiet past its limit; the caller learns it after what came
 * before).
 */
export class ReadAhead {
  readonly #source: () => Promise<Uint8Array | null>;
  readonly #budget: ReadAheadBudget;
  readonly #onDone: () => void;
  readonly #perCall: number;
  /** What is held for the caller, in order: pieces in memory and extents on disk. */
  #queue: (Uint8Array | Extent)[] = [];
  #head = 0;
  /** Bytes held in memory. */
  #queued = 0;
  /** Bytes on disk not yet handed out. */
  #unread = 0;
  #file?: SpillFile;
  /** The size of the last piece read from the source. */
  #lastPiece = SPILL_READ;
  /** Writing to disk failed once: this call spills no more. */
  #diskOff = false;
  /** A spill is under way (opening the file, or writing to it). */
  #writing = false;
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
    onDone: () => void,
    perCall = READ_AHEAD_PER_CALL,
  ) {
    this.#source = source;
    this.#budget = budget;
    this.#onDone = onDone;
    this.#perCall = perCall;
    this.#pump();
  }

  /** Bytes read and not yet handed out, in memory. */
  get queued(): number {
    return this.#queued;
  }

  /** Bytes read and not yet handed out, on disk. */
  get spilled(): number {
    return this.#unread;
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
      if (this.#stopped) throw new Error("the answer was given up");
      if (this.#head < this.#queue.length) {
        const item = this.#queue[this.#head];
        if (item instanceof Uint8Array) {
          this.#shift();
          this.#queued -= item.byteLength;
          this.#budget.give(item.byteLength);
          this.#wakePump?.();
          return item;
        }
        return await this.#readDisk(item);
      }
      if (this.#failed) throw this.#error;
      if (this.#ended) {
        this.#closeFile();
        return null;
      }
      await new Promise<void>((resolve) => this.#wakeReader = resolve);
      this.#wakeReader = undefined;
    }
  }

  #shift(): void {
    this.#queue[this.#head++] = EMPTY;
    if (this.#head === this.#queue.length) this.#queue.length = this.#head = 0;
  }

  /** The next piece of `extent`, read from the spill file. */
  async #readDisk(extent: Extent): Promise<Uint8Array> {
    const out = new Uint8Array(Math.min(SPILL_READ, extent.left));
    for (let got = 0; got < out.byteLength;) {
      let n: number | null;
      try {
        n = await this.#file!.reader.read(out.subarray(got));
      } catch (err) {
        if (this.#stopped) throw new Error("the answer was given up"); // its file closed under it
        throw err;
      }
      if (this.#stopped) throw new Error("the answer was given up");
      if (n === null) throw new Error("the spill file ended short of what was written to it");
      got += n;
    }
    extent.left -= out.byteLength;
    this.#unread -= out.byteLength;
    if (extent.left === 0) this.#shift();
    this.#closeIfCaughtUp();
    this.#wakePump?.();
    return out;
  }

  /**
   * Closes the spill file once the caller has read all of it, giving its
   * room back at once; not while a spill is under way (that one adds to
   * what is unread, or closes it when it fails).
   */
  #closeIfCaughtUp(): void {
    if (this.#unread === 0 && !this.#writing) this.#closeFile();
  }

  /** Gives up what is held (the caller is gone, or had enough); reading stops. */
  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#budget.give(this.#queued);
    this.#queue = [];
    this.#head = this.#queued = this.#unread = 0;
    this.#closeFile();
    this.#wakePump?.();
    this.#wakeReader?.();
  }

  #closeFile(): void {
    const f = this.#file;
    if (!f) return;
    this.#file = undefined;
    this.#budget.giveSpill(f.size);
    f.writer.close();
    f.reader.close();
  }

  /** Whether memory has room for the next piece: always when nothing is held there. */
  #memoryRoom(): boolean {
    return this.#queued === 0 || (this.#queued < this.#perCall && this.#budget.open);
  }

  /** Whether this call's own share on disk has room for `n` bytes more. */
  #diskShare(n: number): boolean {
    const spill = this.#budget.spill;
    if (!spill || this.#diskOff) return false;
    return (this.#file?.size ?? 0) + n <= (spill.perCall ?? SPILL_PER_CALL);
  }

  /** Whether the next piece (of at most `n` bytes) may go to disk. */
  #diskRoom(n: number): boolean {
    return this.#diskShare(n) && this.#budget.spillRoom(n);
  }

  /**
   * Reads the source while there is room: always when nothing is held in
   * memory (then the caller is waiting, as without reading ahead); else while
   * this call's share and the budget allow, in memory, then on disk.
   */
  async #pump(): Promise<void> {
    try {
      while (!this.#stopped) {
        // The next piece taken to be as large as the last: one that is not, and finds no room
        // on disk, is held in memory past the share (by that piece, once).
        if (!this.#memoryRoom() && !this.#diskRoom(this.#lastPiece)) {
          await this.#room();
          continue;
        }
        const c = await this.#source();
        if (this.#stopped) return;
        if (c === null) {
          this.#ended = true;
          this.#onDone();
          break;
        }
        this.#lastPiece = c.byteLength;
        if (this.#memoryRoom() || !this.#diskRoom(c.byteLength) || !(await this.#spill(c))) {
          // In memory (past its share by one piece at most when the disk fails it).
          if (this.#stopped) return;
          this.#queue.push(c);
          this.#queued += c.byteLength;
          this.#budget.take(c.byteLength);
        }
        this.#wakeReader?.();
      }
    } catch (err) {
      if (this.#stopped) return;
      this.#failed = true;
      this.#error = err;
      // The worker is done with it too: its slot goes back now, not when the caller gets here.
      this.#onDone();
    }
    this.#wakeReader?.();
  }

  /**
   * Writes `c` at the end of the spill file (opened first when the call has
   * none); false when the disk failed it, and this call spills no more.
   */
  async #spill(c: Uint8Array): Promise<boolean> {
    const n = c.byteLength;
    // Taken before the first await, so that calls spilling at once never pass the limit
    // together; the file's once it is open (given back with it), else given back here.
    this.#budget.takeSpill(n);
    let owned = false;
    this.#writing = true;
    // A stop closes the file under any of the awaits below: each is followed by a look at
    // whether this is still the call's file (the stop has given its bytes back).
    try {
      let f = this.#file;
      if (!f) {
        const opened = await openSpill(this.#budget.spill!.dir);
        if (this.#stopped) {
          opened.writer.close();
          opened.reader.close();
          this.#budget.giveSpill(n);
          return true;
        }
        f = this.#file = opened;
      }
      f.size += n;
      owned = true;
      for (let o = 0; o < n;) o += await f.writer.write(c.subarray(o));
      if (this.#file !== f) return true;
    } catch (err) {
      if (!owned) this.#budget.giveSpill(n);
      if (this.#stopped) return true;
      // Disk full, or the directory gone: what was written of this piece is never read (its
      // extent is not recorded), and the piece is held in memory instead.
      this.#diskOff = true;
      this.#budget.spillFailed(err);
      this.#writing = false;
      this.#closeIfCaughtUp();
      return false;
    } finally {
      this.#writing = false;
    }
    const last = this.#queue.length > this.#head ? this.#queue[this.#queue.length - 1] : undefined;
    if (last && !(last instanceof Uint8Array)) last.left += n;
    else this.#queue.push({ left: n });
    this.#unread += n;
    return true;
  }

  /** Waits until the caller took a piece, the budget has room again, or reading stopped. */
  async #room(): Promise<void> {
    let wake!: () => void;
    await new Promise<void>((resolve) => {
      this.#wakePump = wake = resolve;
      // On the budget only for what the budget withholds: what this call's own share
      // withholds comes back as its caller reads, and the budget's wake-ups would be for
      // nothing (with many calls, each give would wake them all).
      const memory = this.#queued < this.#perCall && !this.#budget.open;
      const disk = this.#diskShare(this.#lastPiece) && !this.#budget.spillRoom(this.#lastPiece);
      if (memory || disk) this.#budget.onFreed(resolve, { memory, disk });
    });
    this.#wakePump = undefined;
    this.#budget.forget(wake);
  }
}

/** Opens a new spill file in `dir` (made when missing) for writing and reading, and unlinks it. */
async function openSpill(dir: string): Promise<SpillFile> {
  await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  const path = `${dir}/${crypto.randomUUID()}`;
  const writer = await Deno.open(path, { write: true, createNew: true, mode: 0o600 });
  try {
    const reader = await Deno.open(path, { read: true });
    return { writer, reader, size: 0 };
  } catch (err) {
    writer.close();
    throw err;
  } finally {
    await Deno.remove(path).catch(() => {});
  }
}

const EMPTY = new Uint8Array(0);
