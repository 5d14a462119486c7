import assert from "node:assert/strict";

/** The cells of every table row of a report, whitespace aside (`deno fmt` pads the columns). */
function tableRows(markdown: string): string[][] {
  return markdown.split("\n").filter((l) => l.startsWith("|") && !/^\|[\s:|-]+\|$/.test(l))
    .map((l) => l.split("|").slice(1, -1).map((c) => c.trim()));
}

Deno.test({
  name: "the committed small report is what the simulator gives now (else: run both reports again)",
  sanitizeResources: false,
  async fn() {
    const here = (p: string) => new URL(p, import.meta.url).pathname;
    const out = await Deno.makeTempDir({ prefix: "inferx-sim-" });
    try {
      const run = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", here("./main.ts"), "--functions", "200", "--hours", "6", "--out", out],
        stdout: "null",
        stderr: "piped",
      }).output();
      assert.ok(run.success, new TextDecoder().decode(run.stderr));
      const fresh = tableRows(await Deno.readTextFile(`${out}/report.md`));
      const committed = tableRows(await Deno.readTextFile(here("./results/small/report.md")));
      assert.ok(fresh.length >= 9, `${fresh.length} table rows`);
      // The scheduler core or the model changed the figures: `deno task sim --functions 200
      // --hours 6 --out sim/results/small` and `deno task sim` (sim/results), then `deno fmt`.
      assert.deepEqual(fresh, committed);
    } finally {
      await Deno.remove(out, { recursive: true });
    }
  },
});
