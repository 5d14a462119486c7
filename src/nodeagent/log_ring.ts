/** A bounded buffer of the last lines a process printed. @module */

/** Keeps the last `capacity` lines of a stream of text chunks. */
export class LogRing {
  #lines: string[] = [];
  #partial = "";
  #capacity: number;

  constructor(capacity = 200) {
    this.#capacity = capacity;
  }

  /** Appends a chunk of text (lines may span chunks). */
  push(text: string): void {
    const parts = (this.#partial + text).split("\n");
    this.#partial = parts.pop() ?? "";
    for (const line of parts) this.#lines.push(line);
    if (this.#lines.length > this.#capacity) {
      this.#lines.splice(0, this.#lines.length - this.#capacity);
    }
  }

  /** The last `n` lines, the unfinished one included. */
  tail(n = 20): string {
    const all = this.#partial ? [...this.#lines, this.#partial] : this.#lines;
    return all.slice(-n).join("\n");
  }
}
