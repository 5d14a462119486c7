/**
 * Where a process's resident memory is, by kind of mapping, from
 * `/proc/PID/smaps` ({@linkcode classify}). Used by
 * `bench/soak.ts` to place growth; on its own:
 *
 * ```sh
 * deno run -A bench/smaps.ts PID            # one breakdown
 * deno run -A bench/smaps.ts PID 60 10      # ten, a minute apart, then what grew
 * ```
 *
 * @module
 */

/** One mapping: its range, what backs it, and its resident size (kB). */
export interface Mapping {
  start: bigint;
  end: bigint;
  perms: string;
  path: string;
  rssKB: number;
}

/** The mappings of `pid`, with their resident sizes. */
export async function mappings(pid: number): Promise<Mapping[]> {
  const text = await Deno.readTextFile(`/proc/${pid}/smaps`);
  const out: Mapping[] = [];
  let cur: Mapping | undefined;
  for (const line of text.split("\n")) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head) {
      cur = {
        start: BigInt(`0x${head[1]}`),
        end: BigInt(`0x${head[2]}`),
        perms: head[3],
        path: head[4],
        rssKB: 0,
      };
      out.push(cur);
    } else if (cur && line.startsWith("Rss:")) cur.rssKB = Number(line.split(/\s+/)[1]);
  }
  return out;
}

const ARENA = 64n << 20n;
/** Below this, an anonymous mapping is in V8's pointer cage (it reserves its heap low, by hint). */
const MMAP_AREA = 0x7e0000000000n;

/**
 * The kind of each mapping: V8's heap (anonymous, in its pointer cage, which
 * it reserves below the area the C library maps into) and its code (anonymous
 * and executable); malloc's main arena (`[heap]`) and its other arenas
 * (anonymous, in 64 MiB-aligned blocks that begin with one); stacks; files
 * (the executable's and libraries' code and data); other anonymous memory.
 */
export function classify(maps: Mapping[]): Map<Mapping, string> {
  const kinds = new Map<Mapping, string>();
  const anonStarts = new Set(maps.filter((m) => m.path === "").map((m) => m.start));
  for (const m of maps) {
    let kind: string;
    if (m.path === "[heap]") kind = "malloc: main arena ([heap])";
    else if (m.path.startsWith("[stack")) kind = "stacks";
    else if (m.path.startsWith("[")) kind = "kernel ([vdso], [vvar])";
    else if (m.path !== "") kind = "files (code, libraries)";
    else if (m.perms.includes("x")) kind = "V8: code";
    else if (m.start < MMAP_AREA) kind = "V8: heap (pointer cage)";
    else if (anonStarts.has(m.start - (m.start % ARENA))) kind = "malloc: other arenas";
    else kind = "other anonymous (thread stacks, V8 outside its cage, ...)";
    kinds.set(m, kind);
  }
  return kinds;
}

/** Resident memory (MB) by kind. */
export async function residentByKind(pid: number): Promise<Map<string, number>> {
  const maps = await mappings(pid);
  const kinds = classify(maps);
  const out = new Map<string, number>();
  for (const m of maps) {
    const k = kinds.get(m)!;
    out.set(k, (out.get(k) ?? 0) + m.rssKB / 1024);
  }
  return out;
}

/** A table of `before` and `after` by kind, with the growth, largest first. */
export function growthTable(before: Map<string, number>, after: Map<string, number>): string[] {
  const kinds = [...new Set([...before.keys(), ...after.keys()])];
  const rows = kinds.map((k) => ({ k, a: before.get(k) ?? 0, b: after.get(k) ?? 0 }))
    .sort((x, y) => (y.b - y.a) - (x.b - x.a));
  const f = (n: number) => n.toFixed(1);
  return [
    "| resident memory by kind (MB) | before | after | growth |",
    "| --- | ---: | ---: | ---: |",
    ...rows.map((r) =>
      `| ${r.k} | ${f(r.a)} | ${f(r.b)} | ${r.b - r.a >= 0 ? "+" : ""}${f(r.b - r.a)} |`
    ),
  ];
}

if (import.meta.main) {
  const [pidArg, everyArg, countArg] = Deno.args;
  const pid = Number(pidArg);
  if (!Number.isInteger(pid) || pid <= 0) {
    console.error("usage: deno run -A bench/smaps.ts PID [every_s count]");
    Deno.exit(2);
  }
  const first = await residentByKind(pid);
  const every = Number(everyArg ?? 0);
  const count = Number(countArg ?? 1);
  let last = first;
  for (let n = 1; n < count; n++) {
    await new Promise((r) => setTimeout(r, every * 1000));
    last = await residentByKind(pid);
    const total = [...last.values()].reduce((a, b) => a + b, 0);
    console.log(`${n * every} s: ${total.toFixed(1)} MB resident`);
  }
  for (const line of growthTable(first, last)) console.log(line);
}
