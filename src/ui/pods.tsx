/**
 * Pods: state, standby tier, node, GPUs and vRAM, age, and the buttons to
 * read a pod's last log lines and to terminate it.
 *
 * @module
 */
import type { PodInfo } from "../model/cluster.ts";
import { age, funcColor, mb, podFunc } from "./cluster_view.ts";
import { Empty, FuncChip, Live, StateBadge } from "./layout.tsx";

const FINISHED = new Set(["Terminated", "Terminating"]);

/** A table of pods, newest first (a live region). */
export function PodsTable(props: { pods: PodInfo[]; now: number }) {
  if (!props.pods.length) return <Empty>No pods.</Empty>;
  const pods = [...props.pods].sort((a, b) => b.createdAt - a.createdAt);
  return (
    <table class="grid pods">
      <thead>
        <tr>
          <th>Pod</th>
          <th>Function</th>
          <th>Version</th>
          <th>State</th>
          <th>Node</th>
          <th>GPUs</th>
          <th>CPU / memory</th>
          <th>Age</th>
          <th></th>
        </tr>
      </thead>
      <tbody>
        {pods.map((p) => {
          const func = podFunc(p);
          return (
            <tr data-pod={p.id} data-func={func}>
              <td class="mono">{p.id}</td>
              <td>
                <FuncChip id={func} color={funcColor(func)} />
              </td>
              <td>{p.funcVersion}</td>
              <td>
                <StateBadge state={p.state} tier={p.standbyTier} />
                {p.state === "Failed" && p.error
                  ? <div class="error small">{p.error.slice(0, 300)}</div>
                  : null}
              </td>
              <td>{p.node}</td>
              <td>
                {p.gpus.length
                  ? p.gpus.map((g) => `GPU ${g.index}: ${mb(g.vramMB)}`).join(", ")
                  : "–"}
              </td>
              <td>{p.cpuMillis}m / {mb(p.memMB)}</td>
              <td title={new Date(p.createdAt).toISOString()}>{age(props.now - p.createdAt)}</td>
              <td class="actions">
                <button
                  type="button"
                  class="link"
                  data-action="log"
                  data-pod={p.id}
                  data-func={func}
                >
                  Log
                </button>
                {FINISHED.has(p.state) ? null : (
                  <button
                    type="button"
                    class="danger"
                    data-action="terminate"
                    data-pod={p.id}
                    data-func={func}
                  >
                    Terminate
                  </button>
                )}
              </td>
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}

/** The pods page's part. */
export function PodsPage(props: { pods: PodInfo[]; now: number }) {
  return (
    <>
      <h1>Pods</h1>
      <Live src="/ui/part/pods/table">
        <PodsTable pods={props.pods} now={props.now} />
      </Live>
      <LogPanel />
    </>
  );
}

/** The panel the pods tables' "Log" buttons fill (outside the live region, so it stays). */
export function LogPanel() {
  return (
    <div class="log-panel" id="log-panel" hidden>
      <h3>
        Log of <span class="log-pod mono"></span>{" "}
        <button type="button" class="link" data-action="log-refresh">Refresh</button>{" "}
        <button type="button" class="link" data-action="log-close">Close</button>
      </h3>
      <pre class="code log"></pre>
    </div>
  );
}
