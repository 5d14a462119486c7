/** A bounded buffer of the last lines a process printed. @module */

/**
 * The most of one line kept: progress bars redraw with `\r` and never end
 * their line, and what the ring keeps is for a person reading the tail.
 */
export const MAX_LINE = 4096;

/** Keeps the last `capacity` lines of a stream of text chunks. */
export class LogRing {
  #lines: string[] = [];
  /** The unfinished line: its last {@linkcode MAX_LINE} characters at most. */
  #partial = "";
  #capacity: number;

  constructor(capacity = 200) {
    this.#capacity = capacity;
  }

  /** Appends a chunk of text (lines may span chunks). */
  push(text: string): void {
    let start = 0;
    for (let nl = text.indexOf("\n"); nl >= 0; nl = text.indexOf("\n", start)) {
      this.#lines.push(clip(this.#partial + text.slice(start, nl)));
      this.#partial = "";
      start = nl + 1;
    }
    // Only the piece after the last newline joins the unfinished line, clipped: a line that
    // never ends costs its length once, not again with every chunk.
    if (start < text.length) this.#partial = clip(this.#partial + text.slice(start));
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

/** The end of `line`, at most {@linkcode MAX_LINE} characters (the newest part of a redrawn bar). */
function clip(line: string): string {
  return line.length > MAX_LINE ? line.slice(-MAX_LINE) : line;
}
