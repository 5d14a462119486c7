/**
 * Sums a profile as `INFERX_CPU_PROFILE` or `INFERX_HEAP_PROFILE` writes it.
 * A CPU profile: self time (the function itself, runtime builtins it called
 * included when V8 attributes them to it) and total time (with what it
 * called), in ms and as a share of the busy time (all samples but idle),
 * by function and by file. A heap profile: bytes allocated (sampled) by
 * function and by file.
 *
 * Run: `deno run -A bench/profile_summary.ts FILE [rows]` (30).
 */
interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const [file, rowsArg] = Deno.args;
if (!file) {
  console.error("usage: deno run -A bench/profile_summary.ts FILE [rows]");
  Deno.exit(2);
}
const rows = Number(rowsArg ?? 30);
const parsed = JSON.parse(await Deno.readTextFile(file));

const root = new URL("..", import.meta.url).href;
const where = (f: CallFrame) =>
  f.url
    ? `${f.url.replace(root, "").replace(/^.*node_modules\/\.deno\//, "npm:")}:${f.lineNumber + 1}`
    : "";
const label = (f: CallFrame) => `${f.functionName || "(anonymous)"} ${where(f)}`.trim();
const fileOf = (f: CallFrame) => where(f).replace(/:\d+$/, "") || f.functionName;

if (parsed.head) {
  heapSummary(parsed.head as HeapNode);
  Deno.exit(0);
}
const profile = parsed as Profile;
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const parent = new Map<number, number>();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

const self = new Map<string, number>();
const total = new Map<string, number>();
const files = new Map<string, number>();
let busy = 0;
let idle = 0;
for (let i = 0; i < profile.samples.length; i++) {
  const dt = (profile.timeDeltas[i + 1] ?? profile.timeDeltas[i] ?? 0) / 1000;
  const node = byId.get(profile.samples[i])!;
  if (node.callFrame.functionName === "(idle)") {
    idle += dt;
    continue;
  }
  busy += dt;
  const l = label(node.callFrame);
  self.set(l, (self.get(l) ?? 0) + dt);
  const fl = fileOf(node.callFrame);
  files.set(fl, (files.get(fl) ?? 0) + dt);
  const seen = new Set<string>();
  for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
    const k = label(byId.get(id)!.callFrame);
    if (seen.has(k)) continue;
    seen.add(k);
    total.set(k, (total.get(k) ?? 0) + dt);
  }
}

const show = (title: string, m: Map<string, number>) => {
  console.log(`\n${title}`);
  console.log("| ms | share | where |");
  console.log("| ---: | ---: | --- |");
  for (const [k, v] of [...m].sort((a, b) => b[1] - a[1]).slice(0, rows)) {
    console.log(`| ${v.toFixed(1)} | ${(100 * v / busy).toFixed(1)}% | ${k} |`);
  }
};
console.log(
  `${file}: busy ${busy.toFixed(0)} ms, idle ${
    idle.toFixed(0)
  } ms, ${profile.samples.length} samples`,
);
show("self time by function", self);
show("self time by file", files);
show("total time by function (with what it called)", total);

interface HeapNode {
  callFrame: CallFrame;
  selfSize: number;
  children: HeapNode[];
}

/** Bytes allocated by function and by file, from a sampling heap profile's tree. */
function heapSummary(head: HeapNode): void {
  const byFunction = new Map<string, number>();
  const byFile = new Map<string, number>();
  let all = 0;
  const walk = (n: HeapNode) => {
    if (n.selfSize) {
      const l = label(n.callFrame);
      byFunction.set(l, (byFunction.get(l) ?? 0) + n.selfSize);
      const f = fileOf(n.callFrame);
      byFile.set(f, (byFile.get(f) ?? 0) + n.selfSize);
      all += n.selfSize;
    }
    for (const c of n.children) walk(c);
  };
  walk(head);
  console.log(`${file}: ${(all / 1e6).toFixed(1)} MB allocated (sampled)`);
  for (const [title, m] of [["by function", byFunction], ["by file", byFile]] as const) {
    console.log(`\nallocated ${title}`);
    console.log("| MB | share | where |");
    console.log("| ---: | ---: | --- |");
    for (const [k, v] of [...m].sort((a, b) => b[1] - a[1]).slice(0, rows)) {
      console.log(`| ${(v / 1e6).toFixed(2)} | ${(100 * v / all).toFixed(1)}% | ${k} |`);
    }
  }
}
