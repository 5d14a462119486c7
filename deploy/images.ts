/**
 * The platform's container images, built without a registry
 * (`deno task images`):
 *
 * - `inferx-{statesvc,scheduler,gateway,nodeagent}:VERSION`: one root
 *   filesystem (the Deno binary and the libraries it links, the sources, the
 *   npm packages `main.ts` loads, the configuration) imported once per role
 *   with that role's `RUN_SERVICE`, ports, user and labels. Its layer is
 *   stored once. Deno runs with `--cached-only --node-modules-dir=manual`:
 *   it never reaches the network.
 * - `inferx-etcd:VERSION` from Debian's `etcd-server`, and
 *   `inferx-postgres:VERSION` from Debian's PostgreSQL binaries.
 * - the sample worker `inferx/ngram:latest`.
 *
 * The `Dockerfile` builds the same role images for users with a registry:
 * its build stage runs `deno run -A deploy/images.ts rootfs /rootfs`, so both
 * paths assemble the filesystem with the same code; `deploy/images_test.ts`
 * checks that its settings equal {@linkcode roleImages}.
 *
 * Usage: `deno run -A deploy/images.ts [--prefix inferx-] [--tag VERSION]
 * [--label k=v]... [--no-worker]`, or `... rootfs DIR`.
 *
 * @module
 */
import dockerignore from "@balena/dockerignore";
import { parseArgs } from "node:util";
import { RootFs, run } from "../src/common/rootfs.ts";
import { postgresBinDir } from "../src/audit/pg_server.ts";
import { buildNgramImage, NGRAM_IMAGE } from "../src/samples/ngram/image.ts";

/** Root of the repository. */
export const REPO = new URL("../", import.meta.url).pathname.replace(/\/$/, "");

/** The platform's version (`deno.json`), the default tag of the images. */
export const VERSION: string = JSON.parse(Deno.readTextFileSync(`${REPO}/deno.json`)).version;

/** The non-root user images run as (uid = gid). */
export const IMAGE_UID = 65532;

/** Where the sources go in the role images. */
export const APP_DIR = "/app";

/** The repository paths copied to `/app` (less what `.dockerignore` leaves out). */
export const APP_SOURCES = ["deno.json", "deno.lock", "main.ts", "src", "proto", "config"];

/** Directories of the role images writable by their user. */
export const ROLE_OWNED_DIRS = ["/data"];

/** The roles with an image, and what they set. */
export const ROLES = {
  statesvc: { runService: "StateSvc", expose: [1237] },
  scheduler: { runService: "Scheduler", expose: [1238, 1239] },
  gateway: { runService: "Gateway", expose: [4000] },
  nodeagent: { runService: "NodeAgent", expose: [1233] },
} as const;

/** A role with an image. */
export type ImageRole = keyof typeof ROLES;

/** A health check (Dockerfile `HEALTHCHECK` options and its command, exec form). */
export interface HealthCheck {
  test: string[];
  interval: string;
  timeout: string;
  startPeriod: string;
  retries: number;
}

/** An image's settings, as `docker import --change` or a Dockerfile stage sets them. */
export interface ImageConfig {
  env: Record<string, string>;
  entrypoint: string[];
  workdir?: string;
  user: string;
  expose: number[];
  labels: Record<string, string>;
  healthcheck?: HealthCheck;
}

/** Options naming and labelling the images. */
export interface ImageNameOptions {
  /** Prepended to `statesvc`, `etcd`, ...: @default "inferx-" */
  prefix?: string;
  /** @default VERSION */
  tag?: string;
  /** `org.opencontainers.image.revision`. @default "unknown" */
  revision?: string;
  /** More labels on every image (e.g. one that marks a test's images). */
  labels?: Record<string, string>;
}

/**
 * The gateway's health check: GET /health on its own address (127.0.0.1
 * when it listens on every address), without loading the platform.
 */
const GATEWAY_HEALTH = [
  "/usr/local/bin/deno",
  "eval",
  "--no-config",
  'const h = Deno.env.get("GATEWAY_HOST") || "127.0.0.1"; ' +
  'const host = h === "0.0.0.0" || h === "::" ? "127.0.0.1" : h.includes(":") ? "[" + h + "]" : h; ' +
  'const r = await fetch("http://" + host + ":" + (Deno.env.get("GATEWAY_PORT") || "4000") + "/health"); ' +
  "Deno.exit(r.ok ? 0 : 1);",
];

function labels(title: string, o: ImageNameOptions): Record<string, string> {
  return {
    "org.opencontainers.image.title": title,
    "org.opencontainers.image.version": VERSION,
    "org.opencontainers.image.revision": o.revision ?? "unknown",
    ...o.labels,
  };
}

/** Image name `{prefix}{what}:{tag}`. */
export function imageName(what: string, o: ImageNameOptions = {}): string {
  return `${o.prefix ?? "inferx-"}${what}:${o.tag ?? VERSION}`;
}

/** The role images: one filesystem, these settings per role. */
export function roleImages(o: ImageNameOptions = {}): Record<ImageRole, ImageConfig> {
  const base = (role: ImageRole): ImageConfig => ({
    env: {
      PATH: "/usr/local/bin:/usr/bin:/bin",
      DENO_DIR: "/tmp/deno",
      DENO_NO_UPDATE_CHECK: "1",
      INFERX_DATA_DIR: "/data",
      INFERX_BIND: "0.0.0.0",
      GATEWAY_HOST: "0.0.0.0",
      INFERX_SAMPLES: "none",
      INFERX_CTL_NAME: "docker run --rm IMAGE ctl",
      RUN_SERVICE: ROLES[role].runService,
    },
    entrypoint: [
      "/usr/local/bin/deno",
      "run",
      "-A",
      "--cached-only",
      "--node-modules-dir=manual",
      `${APP_DIR}/main.ts`,
    ],
    workdir: APP_DIR,
    user: `${IMAGE_UID}:${IMAGE_UID}`,
    expose: [...ROLES[role].expose],
    labels: labels(`inferx-${role}`, o),
  });
  const gateway = base("gateway");
  gateway.healthcheck = {
    test: GATEWAY_HEALTH,
    interval: "10s",
    timeout: "3s",
    startPeriod: "30s",
    retries: 3,
  };
  const nodeagent = base("nodeagent");
  // The node agent drives the node's Docker engine through its socket.
  nodeagent.user = "0:0";
  nodeagent.env.INFERX_RUNTIME = "docker";
  return { statesvc: base("statesvc"), scheduler: base("scheduler"), gateway, nodeagent };
}

/** The etcd image's settings (the path the Kubernetes manifest runs: /usr/local/bin/etcd). */
export function etcdImage(etcdVersion: string, o: ImageNameOptions = {}): ImageConfig {
  return {
    // No ETCD_* variables: etcd refuses a flag that a variable also sets.
    env: { PATH: "/usr/local/bin:/usr/bin:/bin" },
    entrypoint: ["/usr/local/bin/etcd"],
    workdir: "/var/lib/etcd",
    user: `${IMAGE_UID}:${IMAGE_UID}`,
    expose: [2379, 2380],
    labels: { ...labels("inferx-etcd", o), "inferx.component.version": etcdVersion },
  };
}

/** The PostgreSQL image's settings: reads what the official image reads (POSTGRES_USER, ...). */
export function postgresImage(pgVersion: string, o: ImageNameOptions = {}): ImageConfig {
  const major = pgVersion.split(".")[0];
  return {
    env: {
      PATH: `/usr/lib/postgresql/${major}/bin:/usr/local/bin:/usr/bin:/bin`,
      PGDATA: "/var/lib/postgresql/data",
      TZ: "UTC",
    },
    entrypoint: ["/usr/local/bin/postgres-entrypoint"],
    user: `${IMAGE_UID}:${IMAGE_UID}`,
    expose: [5432],
    labels: { ...labels("inferx-postgres", o), "inferx.component.version": pgVersion },
  };
}

/** `v` as a setting's value: words of plain characters, quoted when more than one. */
function plain(what: string, v: string): string {
  if (!/^([\w.:/,@+=\-]+( [\w.:/,@+=\-]+)*)?$/.test(v)) {
    throw new Error(`Invalid ${what} "${v}" for an image setting`);
  }
  return v.includes(" ") ? `"${v}"` : v;
}

function name(k: string): string {
  if (!/^[\w.\-]+$/.test(k)) throw new Error(`Invalid name "${k}" for an image setting`);
  return k;
}

/** `docker import --change` lines for `c`. */
export function dockerChanges(c: ImageConfig): string[] {
  const out = Object.entries(c.env).map(([k, v]) => `ENV ${name(k)}=${plain(k, v)}`);
  if (c.workdir) out.push(`WORKDIR ${c.workdir}`);
  out.push(`USER ${c.user}`);
  for (const p of c.expose) out.push(`EXPOSE ${p}`);
  for (const [k, v] of Object.entries(c.labels)) {
    out.push(`LABEL ${name(k)}=${plain(k, v)}`);
  }
  if (c.healthcheck) {
    const h = c.healthcheck;
    out.push(
      `HEALTHCHECK --interval=${h.interval} --timeout=${h.timeout} --start-period=${h.startPeriod} ` +
        `--retries=${h.retries} CMD ${JSON.stringify(h.test)}`,
    );
  }
  out.push(`ENTRYPOINT ${JSON.stringify(c.entrypoint)}`);
  return out;
}

async function writeUsers(fs: RootFs): Promise<void> {
  await fs.writeFile(
    "/etc/passwd",
    `root:x:0:0:root:/root:/sbin/nologin\ninferx:x:${IMAGE_UID}:${IMAGE_UID}:inferx:/nonexistent:/sbin/nologin\n`,
  );
  await fs.writeFile("/etc/group", `root:x:0:\ninferx:x:${IMAGE_UID}:\n`);
  await fs.mkdir("/tmp", { mode: 0o1777 });
}

/** The `.deno/<folder>` names of the npm packages `main.ts` loads (and what they depend on). */
export async function runtimePackages(repo = REPO): Promise<Set<string>> {
  const info = JSON.parse(
    await run(Deno.execPath(), ["info", "--json", "main.ts"], {
      cwd: repo,
    }),
  ) as {
    modules: { kind?: string; npmPackage?: string }[];
    npmPackages: Record<string, { dependencies: string[]; localPath?: string }>;
  };
  const todo = info.modules.filter((m) => m.kind === "npm" && m.npmPackage).map((m) =>
    m.npmPackage!
  );
  const seen = new Set<string>();
  const folders = new Set<string>();
  while (todo.length) {
    const id = todo.pop()!;
    if (seen.has(id)) continue;
    seen.add(id);
    const pkg = info.npmPackages[id];
    if (!pkg) throw new Error(`deno info lists no npm package ${id}`);
    const folder = pkg.localPath?.match(/node_modules\/\.deno\/([^/]+)\//)?.[1];
    if (!folder) throw new Error(`npm package ${id} is not in node_modules: run deno install`);
    folders.add(folder);
    todo.push(...pkg.dependencies);
  }
  if (!folders.size) throw new Error("deno info lists no npm package for main.ts");
  return folders;
}

/** Removes links whose target was left out, then directories left empty. */
async function pruneDangling(dir: string): Promise<boolean> {
  let empty = true;
  for await (const e of Deno.readDir(dir)) {
    const path = `${dir}/${e.name}`;
    if (e.isSymlink && !(await Deno.stat(path).then(() => true, () => false))) {
      await Deno.remove(path);
    } else if (e.isDirectory && !e.isSymlink && await pruneDangling(path)) {
      await Deno.remove(path);
    } else empty = false;
  }
  return empty;
}

/** Whether `.dockerignore` leaves out a path (relative to the repository). */
export async function dockerIgnored(repo = REPO): Promise<(rel: string) => boolean> {
  const text = await Deno.readTextFile(`${repo}/.dockerignore`).catch(() => "");
  // A CommonJS module: its types call the function `default`, as it also is at run time.
  const ig = dockerignore.default().add(text.split("\n"));
  return (rel) => ig.ignores(rel.replace(/\/$/, ""));
}

/**
 * Assembles the role images' filesystem into `fs`: Deno and its libraries,
 * {@linkcode APP_SOURCES} under /app, the npm packages `main.ts` loads,
 * /etc/passwd, /tmp and /data.
 */
export async function assembleRoleFs(fs: RootFs, repo = REPO): Promise<void> {
  await fs.addExecutable(Deno.execPath(), "/usr/local/bin/deno");
  await writeUsers(fs);
  for (const dir of ROLE_OWNED_DIRS) await fs.mkdir(dir, { owner: IMAGE_UID });
  const ignored = await dockerIgnored(repo);
  for (const src of APP_SOURCES) {
    const info = await Deno.stat(`${repo}/${src}`);
    if (info.isFile) await fs.copyFile(`${repo}/${src}`, `${APP_DIR}/${src}`);
    else {
      await fs.copyTree(`${repo}/${src}`, `${APP_DIR}/${src}`, {
        skip: (rel) => ignored(`${src}/${rel}`),
      });
    }
  }
  const keep = await runtimePackages(repo);
  await fs.copyTree(`${repo}/node_modules`, `${APP_DIR}/node_modules`, {
    skip: (rel) => {
      const m = rel.match(/^\.deno\/([^/]+)\/$/);
      return rel === ".bin/" || (m !== null && m[1] !== "node_modules" && !keep.has(m[1]));
    },
  });
  await pruneDangling(`${fs.dir}${APP_DIR}/node_modules`);
}

async function assembleEtcdFs(fs: RootFs): Promise<string> {
  const etcd = (await run("sh", ["-c", "command -v etcd"]).catch(() => "")).trim();
  if (!etcd) {
    throw new Error(
      "Cannot build the etcd image: etcd is not installed (Debian package etcd-server)",
    );
  }
  const version = (await run(etcd, ["--version"])).match(/etcd Version:\s*(\S+)/)?.[1] ?? "unknown";
  await fs.addExecutable(await Deno.realPath(etcd), "/usr/local/bin/etcd");
  await writeUsers(fs);
  await fs.mkdir("/var/lib/etcd", { owner: IMAGE_UID, mode: 0o700 });
  return version;
}

async function assemblePostgresFs(fs: RootFs): Promise<string> {
  const bin = postgresBinDir();
  if (!bin) {
    throw new Error("Cannot build the PostgreSQL image: Debian's postgresql is not installed");
  }
  const version = (await run(`${bin}/postgres`, ["--version"])).match(/\) (\d+(?:\.\d+)?)/)?.[1] ??
    "unknown";
  const home = bin.replace(/\/bin$/, "");
  const major = home.slice(home.lastIndexOf("/") + 1);
  for (const b of ["postgres", "initdb", "pg_isready", "pg_ctl"]) {
    await fs.addExecutable(`${bin}/${b}`, `${bin}/${b}`);
  }
  // Loadable modules (plpgsql, text search, encodings), without the LLVM JIT.
  for await (const e of Deno.readDir(`${home}/lib`)) {
    if (!e.isFile || !e.name.endsWith(".so") || e.name.startsWith("llvmjit")) continue;
    await fs.addExecutable(`${home}/lib/${e.name}`, `${home}/lib/${e.name}`);
  }
  await fs.copyTree(`/usr/share/postgresql/${major}`, `/usr/share/postgresql/${major}`, {
    skip: (rel) => rel === "man/",
  });
  await fs.copyFile("/usr/share/zoneinfo/Etc/UTC", "/usr/share/zoneinfo/UTC");
  await fs.copyFile("/usr/share/zoneinfo/Etc/UTC", "/usr/share/zoneinfo/Etc/UTC");
  await fs.addExecutable(await Deno.realPath("/bin/sh"), "/bin/sh");
  await fs.copyFile(`${REPO}/deploy/postgres-entrypoint.sh`, "/usr/local/bin/postgres-entrypoint");
  await writeUsers(fs);
  await fs.mkdir("/var/lib/postgresql", { owner: IMAGE_UID });
  await fs.mkdir("/var/run/postgresql", { owner: IMAGE_UID });
  return version;
}

/** Options for {@linkcode buildImages}. */
export interface BuildImagesOptions extends ImageNameOptions {
  /** Also build the sample worker image. @default true */
  worker?: boolean;
}

/** A built image. */
export interface BuiltImage {
  name: string;
  /** Bytes, as `docker image inspect` reports. */
  size: number;
}

async function imageSize(name: string): Promise<number> {
  return Number((await run("docker", ["image", "inspect", "--format", "{{.Size}}", name])).trim());
}

/** The repository's revision: the commit, `-dirty` when files changed. */
export async function gitRevision(repo = REPO): Promise<string> {
  try {
    const head = (await run("git", ["-C", repo, "rev-parse", "HEAD"])).trim();
    const dirty = (await run("git", ["-C", repo, "status", "--porcelain"])).trim() !== "";
    return dirty ? `${head}-dirty` : head;
  } catch {
    return "unknown";
  }
}

/** Builds every image; returns their names and sizes. */
export async function buildImages(o: BuildImagesOptions = {}): Promise<BuiltImage[]> {
  const opts = { ...o, revision: o.revision ?? await gitRevision() };
  const built: BuiltImage[] = [];
  const build = async (
    assemble: (fs: RootFs) => Promise<Record<string, ImageConfig>>,
  ) => {
    const fs = await RootFs.create();
    const tar = `${fs.dir}.tar`;
    try {
      const images = await assemble(fs);
      await fs.tar(tar);
      for (const [name, config] of Object.entries(images)) {
        await fs.importAs(name, dockerChanges(config), tar);
        built.push({ name, size: await imageSize(name) });
      }
    } finally {
      await fs.remove();
      await Deno.remove(tar).catch(() => {});
    }
  };
  await build(async (fs) => {
    await assembleRoleFs(fs);
    const roles = roleImages(opts);
    return Object.fromEntries(
      Object.entries(roles).map(([role, c]) => [imageName(role, opts), c]),
    );
  });
  await build(async (fs) => ({
    [imageName("etcd", opts)]: etcdImage(await assembleEtcdFs(fs), opts),
  }));
  await build(async (fs) => ({
    [imageName("postgres", opts)]: postgresImage(await assemblePostgresFs(fs), opts),
  }));
  if (o.worker ?? true) {
    await buildNgramImage();
    built.push({ name: NGRAM_IMAGE, size: await imageSize(NGRAM_IMAGE) });
  }
  return built;
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      prefix: { type: "string" },
      tag: { type: "string" },
      label: { type: "string", multiple: true },
      "no-worker": { type: "boolean" },
    },
  });
  if (positionals[0] === "rootfs") {
    // The Dockerfile's build stage: the role images' filesystem into a directory.
    if (!positionals[1]) throw new Error("Usage: deploy/images.ts rootfs DIR");
    await assembleRoleFs(await RootFs.create(positionals[1]));
  } else {
    const t0 = performance.now();
    const built = await buildImages({
      prefix: values.prefix,
      tag: values.tag,
      labels: Object.fromEntries((values.label ?? []).map((l) => {
        const i = l.indexOf("=");
        return [l.slice(0, i), l.slice(i + 1)];
      })),
      worker: !values["no-worker"],
    });
    for (const b of built) console.log(`${b.name}\t${(b.size / 1e6).toFixed(1)} MB`);
    console.log(
      `built ${built.length} images in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
    );
  }
}
