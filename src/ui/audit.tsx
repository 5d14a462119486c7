/**
 * The audit: calls (or pod state changes) newest first, filtered by tenant,
 * namespace, function and status, through the same query as `/audit`.
 *
 * @module
 */
import type { PodRow, RequestRow } from "../audit/types.ts";
import { CallsTable } from "./functions.tsx";
import { Empty, StateBadge } from "./layout.tsx";

/** The audit page's filter, as given in the query. */
export interface AuditFilter {
  kind: "requests" | "pods";
  tenant?: string;
  namespace?: string;
  func?: string;
  status?: string;
  limit: number;
}

function PodsAudit(props: { rows: PodRow[] }) {
  if (!props.rows.length) return <Empty>No pod changes recorded.</Empty>;
  return (
    <table class="grid">
      <thead>
        <tr>
          <th>Time</th>
          <th>Function</th>
          <th>Pod</th>
          <th>Node</th>
          <th>From</th>
          <th>To</th>
          <th>Reason</th>
        </tr>
      </thead>
      <tbody>
        {props.rows.map((r) => (
          <tr>
            <td class="small">{new Date(r.time).toISOString().replace("T", " ").slice(0, 23)}</td>
            <td class="mono">{`${r.tenant}/${r.namespace}/${r.func}`}</td>
            <td class="mono">{r.pod}</td>
            <td>{r.node}</td>
            <td>{r.prevState ?? "–"}</td>
            <td>
              <StateBadge state={r.state} />
            </td>
            <td class="small">{r.reason ?? ""}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/** The audit page's part. */
export function AuditPage(
  props: {
    filter: AuditFilter;
    requests?: RequestRow[];
    pods?: PodRow[];
    kept: boolean;
    /** Why the filter was refused: said under the form, which stays to be corrected. */
    error?: string;
  },
) {
  const f = props.filter;
  return (
    <>
      <h1>Audit</h1>
      <form id="audit-form" class="row-form" method="get" action="/ui/audit">
        <label>
          Rows{" "}
          <select name="kind">
            <option value="requests" selected={f.kind === "requests"}>calls</option>
            <option value="pods" selected={f.kind === "pods"}>pod changes</option>
          </select>
        </label>
        <label>
          Tenant <input type="text" name="tenant" value={f.tenant ?? ""} />
        </label>
        <label>
          Namespace <input type="text" name="namespace" value={f.namespace ?? ""} />
        </label>
        <label>
          Function <input type="text" name="func" value={f.func ?? ""} />
        </label>
        <label>
          Status{" "}
          <input
            type="text"
            name="status"
            value={f.status ?? ""}
            placeholder="200, 5xx"
            size={5}
            disabled={f.kind === "pods"}
            title={f.kind === "pods" ? "pod changes have no status code" : undefined}
          />
        </label>
        <label>
          Limit <input type="number" name="limit" min="1" max="10000" value={String(f.limit)} />
        </label>
        <button type="submit" class="primary">Filter</button>
      </form>
      {props.error !== undefined
        ? <p class="error refused">{props.error}</p>
        : !props.kept
        ? <Empty>This gateway keeps no audit log.</Empty>
        : f.kind === "pods"
        ? <PodsAudit rows={props.pods ?? []} />
        : <CallsTable rows={props.requests ?? []} showFunc />}
    </>
  );
}
