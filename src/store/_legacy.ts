/**
 * Reads the data directory of the store that preceded the SQLite one: a
 * `snapshot.json` plus a `wal.log` of JSON lines. Only the migration into
 * SQLite uses it.
 *
 * @module
 */
import { z } from "zod";
import { InferxError } from "../common/errors.ts";
import type { KeyValue } from "./types.ts";

/** The files of a legacy store, relative to its directory. */
export const LEGACY_FILES = ["snapshot.json", "wal.log"] as const;

const Revision = z.int().min(1);
const LogEntrySchema = z.discriminatedUnion("op", [
  z.object({
    op: z.literal("put"),
    key: z.string(),
    value: z.string(),
    rev: Revision,
    crev: Revision,
  }),
  z.object({ op: z.literal("del"), key: z.string(), rev: Revision }),
]);
const SnapshotSchema = z.object({
  revision: z.int().min(0),
  items: z.array(
    z.object({ key: z.string(), value: z.string(), revision: Revision, createRevision: Revision }),
  ),
});

function invalid(path: string, why: string): InferxError {
  return new InferxError("invalid", `Cannot migrate the old store file ${path}: ${why}`);
}

/** The state a legacy store directory holds. */
export interface LegacyState {
  revision: number;
  items: KeyValue[];
}

async function readIfThere(path: string): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined;
    throw err;
  }
}

/**
 * The state in `dir`'s snapshot and log, or undefined when neither file is
 * there. A torn last log line (a crash mid-write) ends the log: everything
 * before it is intact.
 */
export async function readLegacyStore(dir: string): Promise<LegacyState | undefined> {
  const snapText = await readIfThere(`${dir}/snapshot.json`);
  const log = await readIfThere(`${dir}/wal.log`);
  if (snapText === undefined && log === undefined) return undefined;
  const data = new Map<string, KeyValue>();
  let revision = 0;
  if (snapText !== undefined) {
    const r = SnapshotSchema.safeParse(JSON.parse(snapText));
    if (!r.success) throw invalid(`${dir}/snapshot.json`, r.error.issues[0].message);
    const snap = r.data;
    revision = snap.revision;
    for (const kv of snap.items) data.set(kv.key, kv);
  }
  const lines = (log ?? "").split("\n");
  for (let i = 0; i < lines.length; i++) {
    if (!lines[i]) continue;
    let raw: unknown;
    try {
      raw = JSON.parse(lines[i]);
    } catch {
      // A line torn by a crash while it was written can only be the last one.
      if (lines.slice(i + 1).every((l) => !l)) break;
      throw invalid(`${dir}/wal.log`, `line ${i + 1} is not JSON, and lines follow it`);
    }
    const r = LogEntrySchema.safeParse(raw);
    if (!r.success) throw invalid(`${dir}/wal.log`, `line ${i + 1}: ${r.error.issues[0].message}`);
    const e = r.data;
    if (e.rev <= revision) continue;
    revision = e.rev;
    if (e.op === "put") {
      data.set(e.key, { key: e.key, value: e.value, revision: e.rev, createRevision: e.crev });
    } else data.delete(e.key);
  }
  return { revision, items: [...data.values()] };
}
