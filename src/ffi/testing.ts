/**
 * Test support: builds the fake `libcuda.so` from `testdata/fake_libcuda.c`
 * with gcc.
 *
 * @module
 */

const SOURCE = new URL("./testdata/fake_libcuda.c", import.meta.url).pathname;

/** Why the fake driver cannot be built here, or undefined. */
export function fakeLibCudaUnavailable(): string | undefined {
  try {
    return new Deno.Command("gcc", { args: ["--version"], stdout: "null", stderr: "null" })
        .outputSync().success
      ? undefined
      : "gcc does not run";
  } catch {
    return "gcc is not installed";
  }
}

/** Compiles the fake driver (with `defines`, e.g. `-DNO_CHECKPOINT`) and returns its path. */
export async function buildFakeLibCuda(defines: string[] = []): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "fake-libcuda-" });
  const out = `${dir}/libcuda.so.1`;
  const r = await new Deno.Command("gcc", {
    args: ["-shared", "-fPIC", "-O1", ...defines, "-o", out, SOURCE],
  })
    .output();
  if (!r.success) {
    throw new Error(`Cannot build the fake libcuda: ${new TextDecoder().decode(r.stderr)}`);
  }
  return out;
}
