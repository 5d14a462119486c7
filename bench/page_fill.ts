/**
 * How fast this machine fills fresh memory from a file in the page cache,
 * which is what a CRIU restore spends most of its time on: it maps the
 * worker's memory anew and reads the image into it (one `preadv` of the
 * whole image for the torch worker), and only afterwards restores the
 * worker's own `madvise()` flags. So the restore fills 4 KiB pages unless
 * the kernel's transparent huge page mode is `always`.
 *
 * Measured through FFI to the C library, as the restore does it: an
 * anonymous private mapping filled by `pread` from a file just read (so in
 * the page cache), in 4 KiB pages, and again with `MADV_HUGEPAGE` before the
 * read (huge pages where the mode allows them: `always` or `madvise`).
 *
 * Run alone: `deno run -A bench/page_fill.ts [MB]` (64).
 *
 * @module
 */
import { hugePageMode } from "../src/nodeagent/discover.ts";

/** One fill: a mapping of `bytes` filled from the file in one `pread`. */
export interface PageFill {
  /** The kernel's transparent huge page mode. */
  mode: string | undefined;
  bytes: number;
  /** Microseconds a 4 KiB page, median of the rounds. */
  smallUsPerPage: number;
  /** The same with `MADV_HUGEPAGE` asked for before the read. */
  hugeUsPerPage: number;
}

const MADV_HUGEPAGE = 14;
const PROT_RW = 0x1 | 0x2;
const MAP_PRIVATE_ANON = 0x02 | 0x20;
const O_RDONLY = 0;
const PAGE = 4096;
const HUGE = 2 * 1024 * 1024;

/** Measures the fill of `mb` MB, `rounds` times each way. */
export async function pageFill(mb = 64, rounds = 3): Promise<PageFill> {
  const bytes = mb * 1024 * 1024;
  const libc = Deno.dlopen("libc.so.6", {
    mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
    munmap: { parameters: ["pointer", "usize"], result: "i32" },
    madvise: { parameters: ["pointer", "usize", "i32"], result: "i32" },
    open: { parameters: ["buffer", "i32"], result: "i32" },
    pread: { parameters: ["i32", "pointer", "usize", "i64"], result: "isize" },
    close: { parameters: ["i32"], result: "i32" },
  });
  const path = await Deno.makeTempFile({ prefix: "inferx-page-fill-" });
  try {
    const chunk = new Uint8Array(1024 * 1024);
    for (let i = 0; i < chunk.length; i += 4) chunk[i] = i & 0xff;
    const file = await Deno.open(path, { write: true });
    for (let i = 0; i < mb; i++) await file.write(chunk);
    file.close();
    await Deno.readFile(path); // into the page cache
    const fd = libc.symbols.open(new TextEncoder().encode(path + "\0"), O_RDONLY);
    if (fd < 0) throw new Error(`Cannot open ${path}`);
    const fill = (huge: boolean): number => {
      // Room to align the start to a huge page, as the kernel wants for one.
      const map = libc.symbols.mmap(null, BigInt(bytes + HUGE), PROT_RW, MAP_PRIVATE_ANON, -1, 0n);
      const base = Deno.UnsafePointer.value(map);
      if (map === null || base === 0xffffffffffffffffn) throw new Error("mmap failed");
      const start = Deno.UnsafePointer.create((base + BigInt(HUGE - 1)) & ~BigInt(HUGE - 1))!;
      if (huge) libc.symbols.madvise(start, BigInt(bytes), MADV_HUGEPAGE);
      const t0 = performance.now();
      const got = libc.symbols.pread(fd, start, BigInt(bytes), 0n);
      const ms = performance.now() - t0;
      libc.symbols.munmap(map, BigInt(bytes + HUGE));
      if (Number(got) !== bytes) throw new Error(`pread read ${got} of ${bytes} bytes`);
      return (ms * 1000) / (bytes / PAGE);
    };
    const small: number[] = [], hugeTimes: number[] = [];
    for (let r = 0; r < rounds; r++) {
      small.push(fill(false));
      hugeTimes.push(fill(true));
    }
    libc.symbols.close(fd);
    return {
      mode: hugePageMode(),
      bytes,
      smallUsPerPage: median(small),
      hugeUsPerPage: median(hugeTimes),
    };
  } finally {
    libc.close();
    await Deno.remove(path);
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** One line on the fill: µs a page each way, and the kernel's mode. */
export function describePageFill(f: PageFill): string {
  const rate = (us: number) => `${(PAGE / us).toFixed(0)} MB/s`;
  return `fresh memory filled from the page cache (${(f.bytes / 1048576).toFixed(0)} MB): ` +
    `${f.smallUsPerPage.toFixed(2)} µs a 4 KiB page (${rate(f.smallUsPerPage)}), ` +
    `${f.hugeUsPerPage.toFixed(2)} µs with MADV_HUGEPAGE (${rate(f.hugeUsPerPage)}); ` +
    `transparent huge pages: ${f.mode ?? "unknown"}`;
}

/** The least time (ms) a restore spends filling an image of `mb` MB here, in the pages it gets. */
export function fillFloorMs(f: PageFill, mb: number): number {
  return (mb * 256 * (f.mode === "always" ? f.hugeUsPerPage : f.smallUsPerPage)) / 1000;
}

if (import.meta.main) {
  console.log(describePageFill(await pageFill(Number(Deno.args[0] ?? 64))));
}
