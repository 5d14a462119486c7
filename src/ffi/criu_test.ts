import assert from "node:assert/strict";
import { criuCapability, logReason, openLibCriu } from "./criu.ts";

const probe = openLibCriu();
const skip = probe.criu ? undefined : probe.reason;
probe.criu?.close();
if (skip) console.log(`skipping the libcriu tests: ${skip}`);

/** What `criu check` on the command line says: exit status and first error line. */
function cliCheck(): { ok: boolean; firstError?: string } {
  const out = new Deno.Command("criu", { args: ["check"], stdout: "piped", stderr: "piped" })
    .outputSync();
  const text = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
  return { ok: out.success, firstError: text.split("\n").find((l) => l.includes("Error"))?.trim() };
}

Deno.test({
  name:
    "criuCapability() agrees with `criu check` and reports its reason when the kernel falls short",
  ignore: skip !== undefined || Deno.uid?.() !== 0,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "criu-check-" });
    try {
      const cap = await criuCapability(dir);
      const cli = cliCheck();
      assert.equal(cap.available, cli.ok, JSON.stringify(cap));
      if (!cap.available) {
        assert.match(cap.reason!, /^criu check failed: /);
        // The binding's reason carries the same first error the CLI prints (e.g. the vDSO one here).
        const core = cli.firstError!.replace(/^Error \([^)]*\):\s*/, "");
        assert.ok(cap.reason!.includes(core), `${cap.reason} lacks "${core}"`);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("openLibCriu() reports a missing library as a reason", () => {
  const r = openLibCriu("/nonexistent/libcriu.so.2");
  assert.equal(r.criu, undefined);
  assert.match(r.reason!, /Cannot load \/nonexistent\/libcriu\.so\.2/);
});

Deno.test("logReason() keeps CRIU's error lines", () => {
  const log = `(00.001) Running check
(00.002) Error (criu/vdso.c:613): vdso: Failed to fill self vdso symtable
(00.003) Error (criu/kerndat.c:1615): kerndat_vdso_fill_symtable failed`;
  assert.equal(
    logReason(log),
    "Error (criu/vdso.c:613): vdso: Failed to fill self vdso symtable; Error (criu/kerndat.c:1615): kerndat_vdso_fill_symtable failed",
  );
  assert.equal(logReason("a\nb\nc\nd"), "b; c; d");
});
