/**
 * What the command line's commands share: how they reach the gateway, how
 * they print and ask, and the error that ends a command with its message.
 *
 * @module
 */

/** A failure to report: its message, exit status 1 (2 for `diff`). */
export class CliError extends Error {}

/** Where a command prints, and how it asks a yes/no question. */
export interface Io {
  out(s: string): void;
  err(s: string): void;
  /** Prints `question` and answers the line typed; default: one line of stdin. */
  ask?(question: string): Promise<string>;
}

/** A gateway's answer: status and body (parsed JSON, or the text when not JSON). */
export interface Answer {
  status: number;
  // deno-lint-ignore no-explicit-any
  json: any;
}

/** What a command works with: the gateway, and where it prints. */
export interface Ctl {
  send: Send;
  io: Io;
}

/** An answer from its status and body text: JSON when the text parses, else the text. */
export function answerOf(status: number, text: string): Answer {
  try {
    return { status, json: JSON.parse(text) };
  } catch {
    return { status, json: text };
  }
}

/** Sends one request to the gateway; throws {@linkcode CliError} when it cannot be reached. */
export type Send = (method: string, path: string, body?: unknown) => Promise<Answer>;

/** The error message of a failed answer: the gateway's `error.message`, or its text. */
export function answerMessage(a: Answer): string {
  const m = (a.json as { error?: { message?: string } } | undefined)?.error?.message;
  return m ?? (typeof a.json === "string" ? a.json : JSON.stringify(a.json));
}

/** Throws a {@linkcode CliError} for an answer that is not 2xx. */
export function ensureOk(method: string, path: string, a: Answer): Answer {
  if (a.status >= 200 && a.status < 300) return a;
  throw new CliError(`${method} ${path}: ${a.status} ${answerMessage(a)}`);
}

/** Reads one line from stdin (without its newline); "" at end of input. */
export async function readLine(): Promise<string> {
  const reader = Deno.stdin.readable.getReader();
  const dec = new TextDecoder();
  let text = "";
  try {
    while (!text.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) break;
      text += dec.decode(value, { stream: true });
    }
  } finally {
    reader.releaseLock();
  }
  return text.split("\n")[0].trim();
}
