/**
 * The worker side of {@linkcode WorkerAuditBackend}: holds one
 * {@linkcode SqliteAuditBackend} and answers each message in turn.
 *
 * @module
 */
/// <reference lib="deno.worker" />
import { getHeapSpaceStatistics } from "node:v8";
import { SqliteAuditBackend } from "./sqlite.ts";
import type { WorkerReply, WorkerRequest } from "./sqlite_worker.ts";

let backend: SqliteAuditBackend | undefined;
/** What to open; a database that could not be opened is tried again with each request. */
let target: Extract<WorkerRequest, { op: "open" }> | undefined;

function open(): SqliteAuditBackend {
  if (backend) return backend;
  if (!target) throw new Error("The audit database is not open");
  return backend = new SqliteAuditBackend(target.path, target.options);
}

async function handle(req: WorkerRequest): Promise<unknown> {
  switch (req.op) {
    case "open":
      target = req;
      open();
      return;
    case "write":
      return await open().write(req.batch);
    case "query":
      return await open().query(req.kind, req.q);
    case "close":
      await backend?.close();
      backend = target = undefined;
      return;
  }
}

// Messages are handled one at a time, in order: each SQLite call is synchronous.
self.onmessage = async (e: MessageEvent<WorkerRequest>) => {
  let reply: WorkerReply;
  try {
    reply = { id: e.data.id, ok: true, result: await handle(e.data) };
  } catch (err) {
    reply = { id: e.data.id, ok: false, error: (err as Error).message ?? String(err) };
  }
  // This thread's young generation, for the process's memory series (a few µs a batch).
  reply.young = getHeapSpaceStatistics().find((s) => s.space_name === "new_space")
    ?.physical_space_size;
  self.postMessage(reply);
};
