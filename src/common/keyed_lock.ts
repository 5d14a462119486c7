/**
 * Runs async work one at a time per key: what one holder read stays true
 * until it has written, whatever else runs meanwhile under other keys.
 * Work that only needs what others wrote to stay true, and may run beside
 * its own kind, runs shared ({@linkcode KeyedLock.runShared}).
 *
 * @module
 */

/** Under one key: the last exclusive holder's turn, and the shared ones since. */
interface Line {
  /** Settles when the last exclusive `run` (and everything before it) has. */
  tail: Promise<void>;
  /** Shared runs queued or running since that exclusive one. */
  shared: Set<Promise<void>>;
}

/** A queue per key; each `run` waits for the ones before it under its key. */
export class KeyedLock {
  #lines = new Map<string, Line>();

  #line(key: string): Line {
    let line = this.#lines.get(key);
    if (!line) this.#lines.set(key, line = { tail: Promise.resolve(), shared: new Set() });
    return line;
  }

  /** Runs `fn` alone under `key`, once every earlier `run` and `runShared` there has settled. */
  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const line = this.#line(key);
    const before = line.shared.size ? Promise.all([line.tail, ...line.shared]) : line.tail;
    let release!: () => void;
    const mine = new Promise<void>((r) => release = r);
    const tail = before.then(() => mine);
    line.tail = tail;
    line.shared = new Set();
    await before;
    try {
      return await fn();
    } finally {
      release();
      // The last in line leaves no entry behind.
      if (line.tail === tail && !line.shared.size && this.#lines.get(key) === line) {
        this.#lines.delete(key);
      }
    }
  }

  /**
   * Runs `fn` under `key` beside other shared runs there, once every
   * earlier `run` has settled; a later `run` waits for it.
   */
  async runShared<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const line = this.#line(key);
    const before = line.tail;
    let release!: () => void;
    const mine = new Promise<void>((r) => release = r);
    const group = line.shared;
    group.add(mine);
    await before;
    try {
      return await fn();
    } finally {
      release();
      group.delete(mine);
      if (line.tail === before && !line.shared.size && this.#lines.get(key) === line) {
        this.#lines.delete(key);
      }
    }
  }

  /** Keys with work running or waiting (for tests). */
  get size(): number {
    return this.#lines.size;
  }
}
