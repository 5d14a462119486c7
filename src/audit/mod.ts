/**
 * Request and pod audit: PostgreSQL when `AUDITDB_ADDR` is set, SQLite in
 * `{INFERX_DATA_DIR}/audit/audit.db` otherwise, both behind the same
 * batching buffer. {@linkcode startPodAudit} turns pod records in the store into one
 * row per state change.
 *
 * @module
 */
import { logger } from "../common/log.ts";
import { decodePod } from "../model/cluster.ts";
import { type Informer, startInformer } from "../rpc/informer.ts";
import type { MetaClient } from "../rpc/types.ts";
import { BatchingAuditLog } from "./batching.ts";
import type { Config } from "../common/config.ts";
import { openWorkerAudit } from "./sqlite_worker.ts";
import { PostgresAuditBackend } from "./postgres.ts";
import type { AuditLog } from "./types.ts";

export type { AuditLog, AuditQuery, AuditStats, PodRow, RequestRow } from "./types.ts";
export { summarizeUsage, type TokenUsage, type UsageQuery, type UsageSummary } from "./usage.ts";
export { BatchingAuditLog } from "./batching.ts";
export { openSqliteAudit, SqliteAuditBackend } from "./sqlite.ts";
export { openWorkerAudit, WorkerAuditBackend } from "./sqlite_worker.ts";
export { MIGRATIONS, PostgresAuditBackend } from "./postgres.ts";

/**
 * Where the audit goes: the data directory and the audit section
 * (`AUDITDB_ADDR`, `AUDIT_BUFFER_ROWS`, `AUDIT_RETAIN_DAYS`, `AUDIT_RETAIN_MB`).
 */
export type AuditConfig = Pick<Config, "dataDir" | "audit">;

/** Opens the audit log the configuration names. */
export function openAudit(env: AuditConfig): AuditLog {
  const config = {
    dbAddr: env.audit.dbAddr,
    dataDir: env.dataDir,
    batching: { maxBuffered: env.audit.bufferRows },
  };
  if (config.dbAddr) {
    const log = logger("audit");
    log.info("Audit to PostgreSQL at {addr}", { addr: redact(config.dbAddr) });
    const backend = new PostgresAuditBackend(config.dbAddr);
    // Migrate now rather than at the first row; a database that is down only delays it.
    backend.migrate().then(
      (applied) => applied.length && log.info("Audit schema migrated: {applied}", { applied }),
      (err) => log.warn("Cannot migrate the audit schema yet: {error}", { error: err.message }),
    );
    return new BatchingAuditLog(backend, config.batching);
  }
  const path = `${config.dataDir}/audit/audit.db`;
  logger("audit").info(
    "Audit to {path}, kept {days} day(s) and {mb} MiB at most (set AUDITDB_ADDR for PostgreSQL)",
    { path, days: env.audit.retainDays, mb: env.audit.retainMB },
  );
  const backend = openWorkerAudit(path, {
    retainDays: env.audit.retainDays,
    retainMB: env.audit.retainMB,
  });
  return new BatchingAuditLog(backend, config.batching);
}

/** A URL without its password, for logs. */
export function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "(unparsable URL)";
  }
}

/**
 * Follows pod records and writes a row whenever a pod's observed state
 * changes, and one (`Deleted`) when its record goes. Pods already there when
 * it starts are taken as seen, so a restart writes no duplicates.
 */
export async function startPodAudit(meta: MetaClient, audit: AuditLog): Promise<Informer> {
  const last = new Map<
    string,
    { state: string; tenant: string; namespace: string; func: string; node: string }
  >();
  let initial = true;
  const informer = await startInformer(meta, "pod", {
    upsert(rec) {
      const p = decodePod(rec.value);
      const prev = last.get(p.id);
      last.set(p.id, {
        state: p.state,
        tenant: p.tenant,
        namespace: p.namespace,
        func: p.func,
        node: p.node,
      });
      if (initial || prev?.state === p.state) return;
      audit.pod({
        time: Date.now(),
        pod: p.id,
        tenant: p.tenant,
        namespace: p.namespace,
        func: p.func,
        node: p.node,
        state: p.state,
        prevState: prev?.state,
        // A failure's error; for a start, what happened to snapshots on the way.
        reason: (p.state === "Failed" ? p.error : p.note)?.slice(0, 2000),
      });
    },
    remove(ref) {
      const prev = last.get(ref.name);
      last.delete(ref.name);
      if (!prev) return;
      audit.pod({
        time: Date.now(),
        pod: ref.name,
        tenant: prev.tenant,
        namespace: prev.namespace,
        func: prev.func,
        node: prev.node,
        state: "Deleted",
        prevState: prev.state,
      });
    },
  });
  initial = false;
  return informer;
}
