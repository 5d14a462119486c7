/**
 * Builds the sample worker image without a registry: a root filesystem with
 * the Deno binary (and the shared libraries it links), the n-gram model
 * server and its weights, imported with `docker import`.
 * `deno task image` (tag `inferx/ngram:latest`).
 *
 * @module
 */
import { RootFs, run } from "../../common/rootfs.ts";

/** The tag the sample function's spec names. */
export const NGRAM_IMAGE = "inferx/ngram:latest";

/** The command that serves the sample model, from the repository root or the image's /app. */
export const NGRAM_COMMANDS = [
  "deno",
  "run",
  "--allow-net",
  "--allow-read",
  "--allow-env",
  "src/samples/ngram/server.ts",
];

/** Whether the Docker engine has image `tag`. */
export async function imageExists(tag: string): Promise<boolean> {
  try {
    await run("docker", ["image", "inspect", tag]);
    return true;
  } catch {
    return false;
  }
}

/** Assembles the root filesystem and imports it as `tag`. */
export async function buildNgramImage(tag = NGRAM_IMAGE): Promise<void> {
  const fs = await RootFs.create();
  try {
    const deno = Deno.execPath();
    await fs.addExecutable(deno, "/usr/local/bin/deno");
    await fs.mkdir("/tmp", { mode: 0o1777 });
    // The server's local module graph, and its weights, under /app.
    const repo = new URL("../../../", import.meta.url).pathname;
    const server = new URL("./server.ts", import.meta.url).pathname;
    const graph = JSON.parse(await run(deno, ["info", "--json", server])) as {
      modules: { specifier: string }[];
    };
    const files = graph.modules.map((m) => m.specifier).filter((s) => s.startsWith("file://"))
      .map((s) => new URL(s).pathname);
    files.push(new URL("./weights.bin", import.meta.url).pathname);
    for (const f of files) await fs.copyFile(f, `/app/${f.slice(repo.length)}`);
    await fs.importAs(tag, [
      "ENV PATH=/usr/local/bin:/usr/bin:/bin",
      "ENV DENO_DIR=/tmp/deno",
      "ENV DENO_NO_UPDATE_CHECK=1",
      "WORKDIR /app",
      'CMD ["deno", "run", "--allow-net", "--allow-read", "--allow-env", "src/samples/ngram/server.ts"]',
    ]);
  } finally {
    await fs.remove();
  }
}

if (import.meta.main) {
  const tag = Deno.args[0] ?? NGRAM_IMAGE;
  const t0 = performance.now();
  await buildNgramImage(tag);
  console.log(`built ${tag} in ${Math.round(performance.now() - t0)} ms`);
}
