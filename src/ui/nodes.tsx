/**
 * Nodes: each GPU as a bar split into the vRAM slices of the pods on it,
 * colored by function (a paused pod keeps its slice, hatched); parked pods
 * whose GPU memory went to host memory or a file apart; CPU and memory.
 *
 * @module
 */
import { age, funcColor, mb, type NodeView, percent, type Usage } from "./cluster_view.ts";
import { Empty, FuncChip, Live } from "./layout.tsx";

function UsageBar(props: { label: string; usage: Usage; unit: (n: number) => string }) {
  const u = props.usage;
  return (
    <div class="usage">
      <span class="usage-label">
        {props.label}: {props.unit(u.used)} of {props.unit(u.total)}
      </span>
      <div class="bar small-bar">
        <div class="fill" style={`width:${percent(u.used, u.total)}`}></div>
      </div>
    </div>
  );
}

const cores = (m: number) => `${Number((m / 1000).toFixed(1))} cores`;

/** Pod starts that wait for the kernel to move each pod into its control group. */
function MovesWait(props: { node: NodeView["node"] }) {
  const d = props.node.favorDynmods;
  if (d?.state !== "off") return null;
  return (
    <span title={d.reason}>
      {" · pod starts may wait for an RCU grace period (favordynmods off)"}
    </span>
  );
}

/**
 * Whether pods start from snapshots on the node, or why not, and what makes
 * its restores and starts slower than they could be (docs/standby.md).
 */
function SnapshotLine(props: { node: NodeView["node"] }) {
  const s = props.node.snapshots;
  if (!s) return null;
  if (!s.available) {
    return (
      <p class="muted small snapshots">
        Snapshots off: {s.reason ?? "no reason given"}
        <MovesWait node={props.node} />
      </p>
    );
  }
  const cache = props.node.criu?.kernelCache;
  return (
    <p class="muted small snapshots">
      Snapshots on · {s.items.filter((i) => i.state === "Ready").length} image(s),{" "}
      {mb(Math.round(s.diskUsedMB ?? 0))} of {mb(Math.round(s.diskBudgetMB ?? 0))}
      {s.hugePages && s.hugePages !== "always" && (
        <span title="restores fill memory 4 KiB at a time">
          {` · transparent huge pages ${s.hugePages}`}
        </span>
      )}
      {cache === "off" && (
        <span title={props.node.criu?.kernelCacheReason}>
          {" · CRIU's kernel cache off: each dump and restore probes the kernel"}
        </span>
      )}
      <MovesWait node={props.node} />
    </p>
  );
}

function NodeCard(props: { view: NodeView; now: number }) {
  const { node, gpus, parked } = props.view;
  const beat = node.heartbeat ? `heartbeat ${age(props.now - node.heartbeat)} ago` : "";
  return (
    <section class="card node" data-node={node.name}>
      <h2>
        {node.name}{" "}
        <span class={node.ready ? "state state-ready" : "state state-failed"}>
          {node.ready ? "Ready" : "Not ready"}
        </span>
      </h2>
      <p class="muted small">
        {node.address} · runtime {node.runtime} · {props.view.pods} pod(s) · standby tiers{" "}
        {node.standbyTiers.join(", ") || "none"}
        {beat && ` · ${beat}`}
        {node.gpuDriver && !node.gpuDriver.available && node.gpus.length
          ? (
            <span title={node.gpuDriver.reason}>
              {" · "}GPUs declared in the node's config (no driver)
            </span>
          )
          : ""}
      </p>
      <SnapshotLine node={node} />
      <UsageBar label="CPU" usage={props.view.cpu} unit={cores} />
      <UsageBar label="Memory" usage={props.view.mem} unit={mb} />
      {gpus.length === 0
        ? <p class="muted">No GPUs.</p>
        : gpus.map((g) => (
          <div class="gpu" data-gpu={g.index}>
            <div class="gpu-label">
              GPU {g.index} · <bdi>{g.type}</bdi> · {mb(g.usedMB)} of {mb(g.totalMB)} held
            </div>
            <div class="bar gpu-bar">
              {g.slices.map((s) => (
                <div
                  class={s.state === "Standby" ? "slice paused" : "slice"}
                  style={`width:${
                    percent(s.vramMB + s.overheadMB, g.totalMB)
                  };background-color:${s.color}`}
                  title={`${s.func} · ${s.pod} · ${s.state}${s.tier ? ` (${s.tier})` : ""} · ${
                    mb(s.vramMB)
                  } + ${mb(s.overheadMB)} context`}
                  data-func={s.func}
                  data-pod={s.pod}
                >
                  <span>{s.func}</span>
                </div>
              ))}
            </div>
          </div>
        ))}
      {parked.length > 0 && (
        <div class="parked">
          <span class="muted small">Parked, GPU memory freed:</span>
          {parked.map((p) => (
            <span
              class="chip parked-pod"
              data-func={p.func}
              data-pod={p.pod}
              title={`${p.pod}: ${p.gpus} × ${mb(p.vramMB)} to restore`}
            >
              <span class="swatch" style={`background:${p.color}`}></span>
              {p.func} · {p.tier ?? "standby"}
            </span>
          ))}
        </div>
      )}
    </section>
  );
}

/** The nodes and their bars (a live region of the nodes page). */
export function NodesBody(props: { views: NodeView[]; now: number }) {
  if (!props.views.length) return <Empty>No nodes have registered.</Empty>;
  const funcs = new Set<string>();
  for (const v of props.views) {
    for (const g of v.gpus) for (const s of g.slices) funcs.add(s.func);
    for (const p of v.parked) funcs.add(p.func);
  }
  return (
    <>
      {funcs.size > 0 && (
        <p class="legend">
          {[...funcs].sort().map((f) => <FuncChip id={f} color={funcColor(f)} />)}
        </p>
      )}
      {props.views.map((v) => <NodeCard view={v} now={props.now} />)}
    </>
  );
}

/** The nodes page's part. */
export function NodesPage(props: { views: NodeView[]; now: number }) {
  return (
    <>
      <h1>Nodes</h1>
      <Live src="/ui/part/nodes/body">
        <NodesBody views={props.views} now={props.now} />
      </Live>
    </>
  );
}
