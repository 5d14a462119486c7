/**
 * Builds the sample worker image without a registry: a root filesystem with
 * the Deno binary (and the shared libraries it links), the n-gram model
 * server and its weights, imported with `docker import`.
 * `deno task image` (tag `inferx/ngram:latest`).
 *
 * @module
 */

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

async function run(
  cmd: string,
  args: string[],
  stdin?: ReadableStream<Uint8Array>,
): Promise<string> {
  const p = new Deno.Command(cmd, {
    args,
    stdin: stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  })
    .spawn();
  if (stdin) await stdin.pipeTo(p.stdin);
  const out = await p.output();
  if (!out.success) {
    throw new Error(
      `${cmd} ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr).trim()}`,
    );
  }
  return new TextDecoder().decode(out.stdout);
}

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
  const root = await Deno.makeTempDir({ prefix: "inferx-image-" });
  try {
    const deno = Deno.execPath();
    await Deno.mkdir(`${root}/usr/local/bin`, { recursive: true });
    await Deno.mkdir(`${root}/tmp`, { recursive: true });
    await Deno.copyFile(deno, `${root}/usr/local/bin/deno`);
    for (const lib of (await run("ldd", [deno])).matchAll(/(\/\S+)/g)) {
      const dir = lib[1].slice(0, lib[1].lastIndexOf("/"));
      await Deno.mkdir(`${root}${dir}`, { recursive: true });
      await Deno.copyFile(await Deno.realPath(lib[1]), `${root}${lib[1]}`);
    }
    // The server's local module graph, and its weights, under /app.
    const repo = new URL("../../../", import.meta.url).pathname;
    const server = new URL("./server.ts", import.meta.url).pathname;
    const graph = JSON.parse(await run(deno, ["info", "--json", server])) as {
      modules: { specifier: string }[];
    };
    const files = graph.modules.map((m) => m.specifier).filter((s) => s.startsWith("file://"))
      .map((s) => new URL(s).pathname);
    files.push(new URL("./weights.bin", import.meta.url).pathname);
    for (const f of files) {
      const rel = f.slice(repo.length);
      await Deno.mkdir(`${root}/app/${rel.slice(0, rel.lastIndexOf("/"))}`, { recursive: true });
      await Deno.copyFile(f, `${root}/app/${rel}`);
    }
    const tar = new Deno.Command("tar", { args: ["-C", root, "-c", "."], stdout: "piped" }).spawn();
    await run("docker", [
      "import",
      "--change",
      "ENV PATH=/usr/local/bin:/usr/bin:/bin",
      "--change",
      "ENV DENO_DIR=/tmp/deno",
      "--change",
      "WORKDIR /app",
      "--change",
      'CMD ["deno", "run", "--allow-net", "--allow-read", "--allow-env", "src/samples/ngram/server.ts"]',
      "-",
      tag,
    ], tar.stdout);
    await tar.status;
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

if (import.meta.main) {
  const tag = Deno.args[0] ?? NGRAM_IMAGE;
  const t0 = performance.now();
  await buildNgramImage(tag);
  console.log(`built ${tag} in ${Math.round(performance.now() - t0)} ms`);
}
