/**
 * Runs async work one at a time per key: what one holder read stays true
 * until it has written, whatever else runs meanwhile under other keys.
 *
 * @module
 */

/** A queue per key; each `run` waits for the ones before it under its key. */
export class KeyedLock {
  #tails = new Map<string, Promise<void>>();

  /** Runs `fn` once every earlier `run` under `key` has settled. */
  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const before = this.#tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => release = r);
    const tail = before.then(() => mine);
    this.#tails.set(key, tail);
    await before;
    try {
      return await fn();
    } finally {
      release();
      // The last in line leaves no entry behind.
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    }
  }

  /** Keys with work running or waiting (for tests). */
  get size(): number {
    return this.#tails.size;
  }
}
