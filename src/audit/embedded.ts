/**
 * The embedded audit backend, used when no database is configured: one JSON
 * line per row in `{dir}/requests.jsonl` and `{dir}/pods.jsonl`. A file
 * that grows past its limit is renamed to `.1` (replacing the previous one),
 * so the audit keeps at most twice the limit per kind on disk.
 *
 * @module
 */
import type { AuditBackend } from "./batching.ts";
import type { AuditKind, AuditQuery, PodRow, RequestRow } from "./types.ts";

/** Audit rows in JSON-lines files. */
export class EmbeddedAuditBackend implements AuditBackend {
  readonly name = "embedded";
  #dir: string;
  #maxBytes: number;

  /** `maxBytes`: size at which a file is rotated. @default 64 MiB */
  constructor(dir: string, maxBytes = 64 * 1024 * 1024) {
    this.#dir = dir;
    this.#maxBytes = maxBytes;
  }

  #path(kind: AuditKind) {
    return `${this.#dir}/${kind}.jsonl`;
  }

  async write(requests: RequestRow[], pods: PodRow[]): Promise<void> {
    await Deno.mkdir(this.#dir, { recursive: true });
    for (const [kind, rows] of [["requests", requests], ["pods", pods]] as const) {
      if (!rows.length) continue;
      const path = this.#path(kind);
      const size = await Deno.stat(path).then((s) => s.size, () => 0);
      if (size >= this.#maxBytes) await Deno.rename(path, `${path}.1`);
      let text = "";
      for (const r of rows) text += JSON.stringify(r) + "\n";
      await Deno.writeTextFile(path, text, { append: true });
    }
  }

  async query(kind: AuditKind, q: AuditQuery): Promise<(RequestRow | PodRow)[]> {
    const limit = q.limit ?? 100;
    const out: (RequestRow | PodRow)[] = [];
    // Newest file first, newest line first.
    for (const path of [this.#path(kind), `${this.#path(kind)}.1`]) {
      let text: string;
      try {
        text = await Deno.readTextFile(path);
      } catch (err) {
        if (err instanceof Deno.errors.NotFound) continue;
        throw err;
      }
      const lines = text.split("\n");
      for (let i = lines.length - 1; i >= 0 && out.length < limit; i--) {
        if (!lines[i]) continue;
        let row: RequestRow | PodRow;
        try {
          row = JSON.parse(lines[i]);
        } catch {
          continue; // a line cut short by a crash
        }
        if (q.tenant !== undefined && row.tenant !== q.tenant) continue;
        if (q.namespace !== undefined && row.namespace !== q.namespace) continue;
        if (q.func !== undefined && row.func !== q.func) continue;
        if (q.since !== undefined && row.time < q.since) continue;
        const status = (row as Partial<RequestRow>).status ?? 0;
        if (q.status && (status < q.status.min || status > q.status.max)) continue;
        out.push(row);
      }
      if (out.length >= limit) break;
    }
    return out.sort((a, b) => b.time - a.time);
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
