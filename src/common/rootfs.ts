/**
 * Container images without a registry: a root filesystem assembled in a
 * staging directory (binaries with the shared libraries they link, trees of
 * files, directories owned by the image's user) and imported with
 * `docker import` plus `--change` settings. The archive is reproducible
 * (sorted, fixed modification time, numeric owners), so importing it under
 * several tags stores its layer once.
 *
 * @example
 * ```ts
 * const fs = await RootFs.create();
 * try {
 *   await fs.addExecutable("/usr/bin/etcd", "/usr/local/bin/etcd");
 *   await fs.mkdir("/var/lib/etcd", { owner: 65532 });
 *   await fs.importAs("my/etcd:1", ['ENTRYPOINT ["/usr/local/bin/etcd"]']);
 * } finally {
 *   await fs.remove();
 * }
 * ```
 *
 * @module
 */

/** Runs `cmd` and returns its standard output; throws with its standard error when it fails. */
export async function run(
  cmd: string,
  args: string[],
  options: { stdin?: ReadableStream<Uint8Array>; env?: Record<string, string>; cwd?: string } = {},
): Promise<string> {
  const p = new Deno.Command(cmd, {
    args,
    env: options.env,
    cwd: options.cwd,
    stdin: options.stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (options.stdin) await options.stdin.pipeTo(p.stdin);
  const out = await p.output();
  if (!out.success) {
    throw new Error(
      `${cmd} ${args.join(" ").slice(0, 300)} failed: ${
        new TextDecoder().decode(out.stderr).trim()
      }`,
    );
  }
  return new TextDecoder().decode(out.stdout);
}

/** The shared libraries `binary` loads (absolute paths, the loader included), from `ldd`. */
export async function linkedLibraries(binary: string): Promise<string[]> {
  const out = await run("ldd", [binary]).catch((err) => {
    // A static binary: ldd says so and fails.
    if (/not a dynamic executable|statically linked/.test(err.message)) return "";
    throw err;
  });
  const missing = out.match(/^\s*(\S+) => not found/m);
  if (missing) throw new Error(`Cannot copy ${binary}: its library ${missing[1]} is not found`);
  return [...out.matchAll(/(?:=>\s*|^\s*)(\/\S+)/gm)].map((m) => m[1]);
}

/** Options for {@linkcode RootFs.mkdir}. */
export interface MkdirOptions {
  /** Permission bits. @default 0o755 */
  mode?: number;
  /** Owner uid (and gid) in the image; root when unset. */
  owner?: number;
}

/** Options for {@linkcode RootFs.copyTree}. */
export interface CopyTreeOptions {
  /** Leaves out a path (relative to the tree's source, `/`-separated; directories end in `/`). */
  skip?(rel: string): boolean;
}

/** A root filesystem being assembled in a staging directory. */
export class RootFs {
  /** The staging directory: the image's `/`. */
  readonly dir: string;
  #owned = new Map<string, number>();

  private constructor(dir: string) {
    this.dir = dir;
  }

  /** A new, empty root filesystem in a temporary directory, or in `dir` (created if missing). */
  static async create(dir?: string): Promise<RootFs> {
    if (dir) await Deno.mkdir(dir, { recursive: true });
    return new RootFs(dir ?? await Deno.makeTempDir({ prefix: "inferx-rootfs-" }));
  }

  /** Directories owned by a non-root user, image path to uid. */
  get owned(): ReadonlyMap<string, number> {
    return this.#owned;
  }

  #path(dest: string): string {
    if (!dest.startsWith("/") || dest.split("/").includes("..")) {
      throw new Error(`Invalid image path "${dest}": must be absolute, without ".."`);
    }
    return `${this.dir}${dest}`;
  }

  async #parent(dest: string): Promise<void> {
    const path = this.#path(dest);
    await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
  }

  /** Creates directory `dest` (and its parents). */
  async mkdir(dest: string, options: MkdirOptions = {}): Promise<void> {
    await Deno.mkdir(this.#path(dest), { recursive: true });
    await Deno.chmod(this.#path(dest), options.mode ?? 0o755);
    if (options.owner !== undefined && options.owner !== 0) this.#owned.set(dest, options.owner);
  }

  /** Writes `text` to `dest`. */
  async writeFile(dest: string, text: string, mode = 0o644): Promise<void> {
    await this.#parent(dest);
    await Deno.writeTextFile(this.#path(dest), text);
    await Deno.chmod(this.#path(dest), mode);
  }

  /** Copies file `src` (following links) to `dest`, keeping its permission bits. */
  async copyFile(src: string, dest: string): Promise<void> {
    await this.#parent(dest);
    await Deno.copyFile(src, this.#path(dest));
  }

  /** Copies the shared libraries `binary` links to the same paths in the image. */
  async addLibraries(binary: string): Promise<void> {
    for (const lib of await linkedLibraries(binary)) {
      await this.copyFile(await Deno.realPath(lib), lib);
    }
  }

  /** Copies executable `src` to `dest` with the shared libraries it links. */
  async addExecutable(src: string, dest: string): Promise<void> {
    await this.copyFile(src, dest);
    await this.addLibraries(src);
  }

  /** Copies directory `src` to `dest`, keeping symbolic links as links. */
  async copyTree(src: string, dest: string, options: CopyTreeOptions = {}): Promise<void> {
    const walk = async (from: string, to: string, rel: string) => {
      await Deno.mkdir(this.#path(to), { recursive: true });
      for await (const e of Deno.readDir(from)) {
        const r = `${rel}${e.name}${e.isDirectory ? "/" : ""}`;
        if (options.skip?.(r)) continue;
        const f = `${from}/${e.name}`;
        const t = `${to}/${e.name}`;
        if (e.isSymlink) await Deno.symlink(await Deno.readLink(f), this.#path(t));
        else if (e.isDirectory) await walk(f, t, r);
        else await Deno.copyFile(f, this.#path(t));
      }
    };
    await walk(src, dest, "");
  }

  /**
   * Writes the image as a tar archive to `path`: sorted, modification time
   * `SOURCE_DATE_EPOCH` (default 0), root-owned but for the owned directories.
   */
  async tar(path: string): Promise<void> {
    const mtime = `--mtime=@${Deno.env.get("SOURCE_DATE_EPOCH") ?? "0"}`;
    const common = ["--sort=name", mtime, "--numeric-owner", "--format=posix"];
    const owned = [...this.#owned.keys()].map((d) => `.${d}`);
    await run("tar", [
      "-C",
      this.dir,
      "-cf",
      path,
      ...common,
      "--owner=0",
      "--group=0",
      "--pax-option=delete=atime,delete=ctime",
      ...owned.map((d) => `--exclude=${d}`),
      ".",
    ]);
    for (const [dir, uid] of this.#owned) {
      await run("tar", [
        "-C",
        this.dir,
        "-rf",
        path,
        ...common,
        `--owner=${uid}`,
        `--group=${uid}`,
        "--pax-option=delete=atime,delete=ctime",
        `.${dir}`,
      ]);
    }
  }

  /** Imports the filesystem as image `tag` with `changes` (Dockerfile lines: ENV, ENTRYPOINT, ...). */
  async importAs(tag: string, changes: string[], tarPath?: string): Promise<void> {
    const path = tarPath ?? `${this.dir}.tar`;
    if (!tarPath) await this.tar(path);
    try {
      await run("docker", [
        "import",
        ...changes.flatMap((c) => ["--change", c]),
        path,
        tag,
      ]);
    } finally {
      if (!tarPath) await Deno.remove(path).catch(() => {});
    }
  }

  /** Removes the staging directory. */
  async remove(): Promise<void> {
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}
