/**
 * Provisions a CRIU that works on this kernel into a private prefix (by
 * default `.criu/` in the repository, git-ignored): Debian's `criu` package
 * from a newer suite (unstable by default) with its library closure, fetched
 * with `apt-get` under a private sources list and state directory (the
 * system's apt configuration and package database are left alone), unpacked
 * with `dpkg -x`, and run through that release's own loader. Nothing is
 * installed system-wide.
 *
 * Run: `deno task criu [--prefix DIR] [--suite sid] [--mirror URL] [--force]`.
 *
 * @module
 */
import { REPO_ROOT } from "../common/config.ts";
import { InferxError } from "../common/errors.ts";
import { Criu, provisionedBinary } from "./criu.ts";

/** Options for {@linkcode provisionCriu}. */
export interface ProvisionOptions {
  /** Where CRIU goes. @default `{repo}/.criu` */
  prefix?: string;
  /** The Debian suite to take CRIU from. @default "sid" */
  suite?: string;
  /** The Debian mirror. @default "http://deb.debian.org/debian" */
  mirror?: string;
  /** The archive keyring that signs the suite. @default Debian's */
  keyring?: string;
  /** Provision again even when the prefix already holds a CRIU that passes its check. */
  force?: boolean;
  /** Progress lines. @default console.log */
  say?: (line: string) => void;
  /** The user it runs as (tests). @default `Deno.uid()` */
  uid?: number | null;
}

/** What a provisioned prefix holds, as written to `{prefix}/inferx-criu.json`. */
export interface ProvisionedCriu {
  version: string;
  suite: string;
  mirror: string;
  packages: string[];
  provisionedAt: string;
}

/** The default prefix: `.criu/` in the repository. */
export const DEFAULT_CRIU_PREFIX = `${REPO_ROOT}/.criu`;

const DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg";

/** Runs a command; throws with its output when it fails. */
async function run(cmd: string, args: string[], cwd?: string): Promise<string> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).output();
  } catch (err) {
    throw new InferxError("unavailable", `Cannot run ${cmd}: ${(err as Error).message}`);
  }
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-5).join("; ");
    throw new InferxError("unavailable", `${cmd} ${args.join(" ")} failed: ${err}`);
  }
  return text;
}

/**
 * The package names `apt-cache depends --recurse` prints for `pkg`
 * (dependencies only), without virtual packages.
 */
export function parseDependsClosure(text: string): string[] {
  const names = new Set<string>();
  for (const line of text.split("\n")) {
    if (!line || /^\s/.test(line) || line.startsWith("<")) continue;
    names.add(line.trim());
  }
  return [...names].sort();
}

/**
 * Downloads CRIU and its library closure from `suite` and unpacks them into
 * the prefix, replacing what was there only once the new one passes
 * `criu check`. Returns what was provisioned.
 */
export async function provisionCriu(options: ProvisionOptions = {}): Promise<ProvisionedCriu> {
  const say = options.say ?? console.log;
  const prefix = options.prefix ?? DEFAULT_CRIU_PREFIX;
  const suite = options.suite ?? "sid";
  const mirror = options.mirror ?? "http://deb.debian.org/debian";
  const keyring = options.keyring ?? DEBIAN_KEYRING;
  // `criu check`, and so every dump and restore, needs root: as another user it fails whatever
  // the build, and a download would end in that failure.
  if ((options.uid === undefined ? Deno.uid() : options.uid) !== 0) {
    const have = await provisionedInfo(prefix);
    if (have && provisionedBinary(prefix)) {
      say(`CRIU ${have.version} already in ${prefix} (its check needs root: not run)`);
      return have;
    }
    throw new InferxError(
      "unavailable",
      "Cannot provision CRIU as a user other than root: CRIU, and so snapshots, needs root (run this task as root)",
    );
  }
  if (!options.force) {
    const have = await provisionedInfo(prefix);
    const bin = provisionedBinary(prefix);
    if (have && bin && (await new Criu(bin).check()).ok) {
      say(`CRIU ${have.version} already in ${prefix} and it passes its check`);
      return have;
    }
  }
  try {
    await Deno.stat(keyring);
  } catch {
    throw new InferxError(
      "unavailable",
      `Cannot provision CRIU: no archive keyring at ${keyring} (install debian-archive-keyring)`,
    );
  }
  const work = `${prefix}.work`;
  const staged = `${prefix}.new`;
  await Deno.remove(work, { recursive: true }).catch(() => {});
  await Deno.remove(staged, { recursive: true }).catch(() => {});
  try {
    for (const d of ["lists/partial", "cache/archives/partial", "debs"]) {
      await Deno.mkdir(`${work}/${d}`, { recursive: true });
    }
    await Deno.writeTextFile(
      `${work}/sources.list`,
      `deb [signed-by=${keyring}] ${mirror} ${suite} main\n`,
    );
    // Private sources, lists, cache and an empty package status: the
    // system's apt state is neither read nor written.
    const apt = [
      "-o",
      `Dir::Etc::SourceList=${work}/sources.list`,
      "-o",
      "Dir::Etc::SourceParts=/dev/null",
      "-o",
      `Dir::State::Lists=${work}/lists`,
      "-o",
      `Dir::Cache=${work}/cache`,
      "-o",
      "Dir::State::Status=/dev/null",
      "-o",
      "APT::Sandbox::User=root",
    ];
    say(`Fetching the package lists of Debian ${suite} from ${mirror}`);
    try {
      await run("apt-get", [...apt, "-qq", "update"]);
    } catch (err) {
      // A mirror that serves a snapshot of the suite (or a clock ahead of it) has a Release past
      // its Valid-Until: still signed by Debian's key, which apt checks all the same.
      if (!/is expired/.test((err as Error).message)) throw err;
      say(
        `Debian ${suite}'s Release file at ${mirror} is past its Valid-Until: taken all the same`,
      );
      apt.push("-o", "Acquire::Check-Valid-Until=false");
      await run("apt-get", [...apt, "-qq", "update"]);
    }
    const closure = parseDependsClosure(
      await run("apt-cache", [
        ...apt,
        "depends",
        "--recurse",
        "--no-recommends",
        "--no-suggests",
        "--no-conflicts",
        "--no-breaks",
        "--no-replaces",
        "--no-enhances",
        "criu",
      ]),
    );
    if (!closure.includes("criu")) {
      throw new InferxError("unavailable", `Cannot provision CRIU: Debian ${suite} has no criu`);
    }
    say(`Downloading ${closure.length} packages: ${closure.join(" ")}`);
    await run("apt-get", [...apt, "-qq", "download", ...closure], `${work}/debs`);
    await Deno.mkdir(staged, { recursive: true });
    for await (const e of Deno.readDir(`${work}/debs`)) {
      if (e.name.endsWith(".deb")) await run("dpkg", ["-x", `${work}/debs/${e.name}`, staged]);
    }
    // Documentation and translations are not needed to run it.
    await Deno.remove(`${staged}/usr/share`, { recursive: true }).catch(() => {});
    const bin = provisionedBinary(staged);
    if (!bin) throw new InferxError("unavailable", `Cannot find criu and its loader in ${staged}`);
    const criu = new Criu(bin);
    const version = await criu.version();
    const check = await criu.check();
    if (!check.ok) {
      throw new InferxError(
        "unavailable",
        `CRIU ${version} from Debian ${suite} fails its check here: ${check.reason}`,
      );
    }
    const info: ProvisionedCriu = {
      version,
      suite,
      mirror,
      packages: closure,
      provisionedAt: new Date().toISOString(),
    };
    await Deno.writeTextFile(`${staged}/inferx-criu.json`, JSON.stringify(info, null, 2) + "\n");
    await Deno.remove(prefix, { recursive: true }).catch(() => {});
    await Deno.rename(staged, prefix);
    say(`CRIU ${version} provisioned in ${prefix}: criu check says "Looks good."`);
    return info;
  } finally {
    await Deno.remove(work, { recursive: true }).catch(() => {});
    await Deno.remove(staged, { recursive: true }).catch(() => {});
  }
}

/** What `prefix` says it holds, or undefined when it was not provisioned. */
export async function provisionedInfo(prefix: string): Promise<ProvisionedCriu | undefined> {
  try {
    return JSON.parse(await Deno.readTextFile(`${prefix}/inferx-criu.json`));
  } catch {
    return undefined;
  }
}

if (import.meta.main) {
  const args = Deno.args;
  const value = (flag: string) => {
    const i = args.indexOf(flag);
    return i >= 0 ? args[i + 1] : undefined;
  };
  try {
    await provisionCriu({
      prefix: value("--prefix"),
      suite: value("--suite"),
      mirror: value("--mirror"),
      force: args.includes("--force"),
    });
  } catch (err) {
    console.error((err as Error).message);
    Deno.exit(1);
  }
}
