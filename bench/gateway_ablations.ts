/**
 * Where the gateway's CPU per call goes, by ablation: for each part of a
 * call's work, a worktree of this checkout with that part taken out (one
 * edit, made here and checked to apply exactly once) is run as the
 * baseline of `bench/gateway.ts` (`GATEWAY_ONLY=1`, `GATEWAY_BASELINE`), so
 * the whole gateway and the ablated one are measured in the same rounds.
 * Prints, per ablation, both gateways' CPU per call, the median of the
 * per-round ratios whole/ablated (what the part costs) and both
 * throughputs as fractions of direct. The edits exist only in the temporary worktrees;
 * they measure, they are not options of the product.
 *
 * Run: `deno run -A bench/gateway_ablations.ts [seconds] [rounds] [names...]`
 * (4, 5, all). Needs git, `wrk`, and the checkout's `node_modules` (linked
 * into each worktree). Results: `bench/results/gateway-2026-12-01-ablation.txt`.
 *
 * @module
 */
import { run } from "../src/common/rootfs.ts";
import { hasCommand } from "./wrk.ts";

/** One text replacement in one file of the worktree. */
interface Edit {
  file: string;
  find: string;
  replace: string;
}

const AUDIT_OFF: Edit = {
  file: "src/gateway/middleware/observe.ts",
  find: "    const audit = this.#o.audit;\n    if (!audit) return;",
  replace: "    const audit = this.#o.audit;\n    if (audit || !audit) return;",
};
const METER_OFF: Edit = {
  file: "src/gateway/middleware/observe.ts",
  find: "    const format = tokenFormat(this.path, a.status, a.headers);",
  replace: "    const format = undefined as ReturnType<typeof tokenFormat>;",
};
const FIELDS_OFF: Edit = {
  file: "src/gateway/proxy.ts",
  find: '  headers.push(\n    ["x-inferx-cold-start"',
  replace: '  if (Math.random() > 2) headers.push(\n    ["x-inferx-cold-start"',
};
const METRICS_OFF: Edit[] = [
  {
    file: "src/gateway/middleware/observe.ts",
    find:
      "    const m = this.#series();\n    m.request(a.status);\n    m.ttfb.observe(a.ttfbMs / 1000);\n" +
      "    if (a.slot.coldStart) m.coldStarts++;\n    if (a.slot.resumed) m.resumes++;\n" +
      "    if (this.#metrics) (this.#version = m.version(a.slot.worker.version)).request(a.status);",
    replace: "",
  },
  {
    file: "src/gateway/middleware/observe.ts",
    find: "    this.#series().duration.observe(ms / 1000);",
    replace: "",
  },
  {
    file: "src/gateway/middleware/observe.ts",
    find: "      if (this.#version) countTokens(this.#version, tokens);",
    replace: "",
  },
];
const SQLITE_OFF: Edit = {
  file: "src/audit/sqlite.ts",
  find: "    if (packed.nums.length > 0) this.#insertRequests(packed);",
  replace: "    if (packed.nums.length < 0) this.#insertRequests(packed);",
};

/** The ablations, by name: what is taken out. */
const ABLATIONS: Record<string, { what: string; edits: Edit[] }> = {
  all: {
    what: "request audit, token meter, x-inferx-* fields and metrics",
    edits: [AUDIT_OFF, METER_OFF, FIELDS_OFF, ...METRICS_OFF],
  },
  audit: { what: "the request audit (no row made)", edits: [AUDIT_OFF] },
  sqlite: { what: "the audit's SQLite insert (rows made and sent)", edits: [SQLITE_OFF] },
  tokens: { what: "token meter and x-inferx-* fields", edits: [METER_OFF, FIELDS_OFF] },
  meter: { what: "token meter", edits: [METER_OFF] },
  fields: { what: "x-inferx-* answer fields", edits: [FIELDS_OFF] },
  metrics: { what: "metrics", edits: METRICS_OFF },
};

const seconds = Number(Deno.args[0] ?? 4);
const rounds = Number(Deno.args[1] ?? 5);
const names = Deno.args.length > 2 ? Deno.args.slice(2) : Object.keys(ABLATIONS);
for (const n of names) {
  if (!ABLATIONS[n]) {
    console.error(`unknown ablation ${n}; known: ${Object.keys(ABLATIONS).join(", ")}`);
    Deno.exit(2);
  }
}
if (!await hasCommand("wrk")) {
  console.error("bench/gateway_ablations.ts needs wrk: apt-get install wrk");
  Deno.exit(2);
}

const root = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const git = (...args: string[]) => run("git", args, { cwd: root });
// The ablated gateways are of HEAD: the one under test (this checkout) must be HEAD too.
try {
  await git("diff", "--quiet", "HEAD", "--", "src", "main.ts");
} catch {
  console.error("src/ has uncommitted changes: commit or stash them (the ablations are of HEAD)");
  Deno.exit(2);
}

/** Makes `dir` a worktree of HEAD with `edits` made in it. */
async function worktree(dir: string, edits: Edit[]): Promise<void> {
  await git("worktree", "add", "--detach", "--force", dir, "HEAD");
  await Deno.symlink(`${root}/node_modules`, `${dir}/node_modules`);
  for (const e of edits) {
    const path = `${dir}/${e.file}`;
    const text = await Deno.readTextFile(path);
    const at = text.indexOf(e.find);
    if (at < 0 || text.indexOf(e.find, at + 1) >= 0) {
      throw new Error(`${e.file}: the ablation's edit does not apply exactly once any more`);
    }
    await Deno.writeTextFile(path, text.slice(0, at) + e.replace + text.slice(at + e.find.length));
  }
}

const table: string[] = [];
for (const name of names) {
  const a = ABLATIONS[name];
  const dir = await Deno.makeTempDir({ prefix: "inferx-ablation-" });
  try {
    await worktree(dir, a.edits);
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${root}/bench/gateway.ts`, String(seconds), "16", "1", String(rounds)],
      env: { GATEWAY_ONLY: "1", GATEWAY_BASELINE: dir },
      stdout: "piped",
      stderr: "inherit",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    console.log(`## without ${a.what} (${name})\n${text}`);
    if (!out.success) throw new Error(`bench/gateway.ts failed for ${name}`);
    const row = (prefix: string) => text.split("\n").find((l) => l.startsWith(prefix))?.split("|");
    const base = row("| baseline gateway");
    const whole = row("| gateway (");
    const ratio = /CPU per request ([\d.]+)x \(rounds: ([^)]*)\)/.exec(text);
    if (!base || !whole || !ratio) throw new Error(`unexpected output for ${name}`);
    table.push(
      `| ${name}: ${a.what} | ${base[7].trim()} | ${whole[7].trim()} | ${ratio[1]}x | ${
        ratio[2]
      } | ${base[3].trim()} | ${whole[3].trim()} |`,
    );
  } finally {
    await git("worktree", "remove", "--force", dir).catch(() => {});
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
console.log(
  `gateway ablations: ${seconds} s rounds, ${rounds} rounds each, 16 connections; deno ${Deno.version.deno}, ${navigator.hardwareConcurrency} cores`,
);
console.log(
  "| taken out | its CPU µs/call | whole gateway's | whole / ablated | rounds | it, of direct | whole, of direct |",
);
console.log("| --- | ---: | ---: | ---: | --- | ---: | ---: |");
for (const line of table) console.log(line);
