/**
 * A network namespace per pod, reached from the host through a veth pair:
 * the host end gets `.1` of a /30 block of a small private range (default
 * `10.213.0.0/16`), the pod end (`eth0` inside) gets `.2`. The namespace has
 * no default route, so a worker reaches nothing but its host end; the host
 * reaches the worker at its `.2` address. Blocks are claimed with exclusive
 * files under `/run/inferx/podnet`, so agents of several platforms on one
 * host never hand out the same block. The whole range is an `unreachable`
 * route on the host: a call to a pod that is gone fails at once instead of
 * leaving the host by its default route.
 *
 * Making a namespace takes two runs of `ip` (5–6 ms on a 2-core VM), so an
 * agent keeps a few made ahead ({@linkcode PodNetworkOptions.spares}): a pod
 * start takes one and the next is made a moment later, off its path.
 *
 * Why: a worker restored from a snapshot keeps the sockets it had, among them
 * a listener on its port. In a namespace of its own, every copy restored from
 * one snapshot binds that port again without meeting the others.
 *
 * @module
 */
import { parsePodCidr } from "../common/cidr.ts";
import { InferxError } from "../common/errors.ts";
import { logger } from "../common/log.ts";

/** A claim (or a takeover's lock) older than this, whose namespace is gone, may be taken over. */
const STALE_MS = 30_000;

/** Options for {@linkcode PodNetworks}. */
export interface PodNetworkOptions {
  /** Prefix of this agent's namespace names (unique per agent on a host). */
  prefix: string;
  /** The private range pods get addresses from (IPv4, /16 to /28). @default "10.213.0.0/16" */
  cidr?: string;
  /** Where block claims are kept. @default "/run/inferx/podnet" */
  stateDir?: string;
  /**
   * Namespaces kept made ahead, each with its block, for the next pods'
   * starts (a start then takes one instead of waiting for `ip`); none in a
   * range of fewer than {@linkcode SPARE_MIN_BLOCKS} blocks. @default 0
   */
  spares?: number;
}

/** The least blocks a range must have for spare namespaces to be kept in it. */
export const SPARE_MIN_BLOCKS = 64;

/** How long after a spare is taken the next is made: the start that took it goes first. */
const REFILL_DELAY_MS = 250;

/** One pod's namespace. */
export interface PodNet {
  /** The namespace's name (`ip netns`). */
  name: string;
  /** `/run/netns/{name}`, for `nsenter --net=`. */
  nsPath: string;
  /** The host end of the veth pair. */
  hostIf: string;
  hostAddr: string;
  /** The address the worker is reached at. */
  podAddr: string;
  /** Its /30 block in the range. */
  block: number;
}

/** Dotted form of an IPv4 address held as a number. */
export function ipString(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
}

/** The host and pod addresses of /30 block `i` of the range. */
export function blockAddrs(base: number, i: number): { host: string; pod: string } {
  return { host: ipString(base + 4 * i + 1), pod: ipString(base + 4 * i + 2) };
}

/** The host end of block `i`'s pair: named by the block's place among all /30s of IPv4, unique whatever the range. */
export function hostIfName(base: number, i: number): string {
  return `ixh${((base >>> 2) + i).toString(36)}`;
}

/** Whether two IPv4 ranges overlap. */
export function rangesOverlap(a: string, b: string): boolean {
  const x = parseCidrLoose(a);
  const y = parseCidrLoose(b);
  if (!x || !y) return false;
  const bits = Math.min(x.bits, y.bits);
  const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0;
  return ((x.base & mask) >>> 0) === ((y.base & mask) >>> 0);
}

function parseCidrLoose(s: string): { base: number; bits: number } | undefined {
  const m = s.match(/^(\d+)\.(\d+)\.(\d+)\.(\d+)(?:\/(\d+))?$/);
  if (!m) return undefined;
  const o = m.slice(1, 5).map(Number);
  return {
    base: (((o[0] << 24) >>> 0) + (o[1] << 16) + (o[2] << 8) + o[3]) >>> 0,
    bits: m[5] === undefined ? 32 : Number(m[5]),
  };
}

async function run(cmd: string, args: string[], stdin?: string): Promise<string> {
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(cmd, {
      args,
      stdin: stdin === undefined ? "null" : "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (err) {
    throw new InferxError("unavailable", `Cannot run ${cmd}: ${(err as Error).message}`);
  }
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  if (!out.success) {
    throw new InferxError(
      "unavailable",
      `${cmd} ${args.join(" ")} failed: ${dec.decode(out.stderr).trim()}`,
    );
  }
  return dec.decode(out.stdout);
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Route types that name their destination after the type, and send nothing on. */
const REFUSING_ROUTES: ReadonlySet<string> = new Set([
  "unreachable",
  "blackhole",
  "prohibit",
  "throw",
]);

/** The line of {@linkcode PodNetworks}' first `ip -batch` that makes the veth pair. */
const LINK_ADD_LINE = 3;

/**
 * Why pod range `cidr` may not be used beside the host's routes (`ip -4
 * route show table all`'s text): one overlaps it that is neither a pod's of
 * this range nor its fence; undefined when none does.
 */
export function routeConflict(routes: string, cidr: string): string | undefined {
  for (const line of routes.split("\n")) {
    const words = line.trim().split(/\s+/);
    // A route of a type (`unreachable 10.213.0.0/16`: another agent's range) names its
    // destination second; read as the destination, the type hid overlapping ranges.
    const typed = REFUSING_ROUTES.has(words[0]);
    const [dst, , dev] = typed ? [words[1], "", undefined] : words;
    if (!dst || dst === "default" || !dst.includes(".")) continue; // local, broadcast...
    if (typed && words[0] === "unreachable" && dst === cidr) continue; // this range's fence
    if (dev?.startsWith("ixh")) continue; // pods (of this range: another's is fenced)
    // A device gone, its routes going (`ip` names it by index): a pod's host end the start's
    // sweep has just deleted, which the kernel takes down a moment later. Read as a host
    // route, it turned pod namespaces off for the whole run.
    if (dev && /^if\d+$/.test(dev)) continue;
    if (rangesOverlap(dst, cidr)) {
      // A fence is another agent's range, or one an earlier run of an agent left (its range
      // changed since): only the operator can tell, and remove it.
      const fence = typed && words[0] === "unreachable"
        ? `; an unreachable route is another agent's pod range, or one an earlier run left: if no agent on this host uses ${dst}, remove it with ip route del unreachable ${dst}`
        : "";
      return `The pod range ${cidr} overlaps the host route ${dst} (set INFERX_POD_CIDR${fence})`;
    }
  }
  return undefined;
}

/** Creates and removes pod network namespaces for one agent. */
export class PodNetworks {
  readonly cidr: string;
  #prefix: string;
  #base: number;
  #blocks: number;
  #claims: string;
  /** Where every range's claims directory is. */
  #stateDir: string;
  /** The range's `unreachable` route was added (by this agent, at least once). */
  #fenced = false;
  /** How many spare namespaces to keep. */
  #spareTarget: number;
  /** Namespaces made ahead, none of them a pod's yet. */
  #spares: PodNet[] = [];
  /** The spares being made. */
  #filling?: Promise<void>;
  #spareSeq = 0;
  /** Stopped: no more spares. */
  #closed = false;
  /** The last spare could not be made (said once until one can). */
  #fillFailed = false;

  constructor(options: PodNetworkOptions) {
    this.cidr = options.cidr ?? "10.213.0.0/16";
    const { base, bits } = parsePodCidr(this.cidr);
    this.#base = base;
    this.#blocks = 2 ** (32 - bits) / 4;
    this.#prefix = options.prefix;
    this.#stateDir = options.stateDir ?? "/run/inferx/podnet";
    this.#claims = `${this.#stateDir}/${this.cidr.replace("/", "_")}`;
    this.#spareTarget = this.#blocks >= SPARE_MIN_BLOCKS ? options.spares ?? 0 : 0;
  }

  /** The spare namespaces made ahead now (their names). */
  get spares(): string[] {
    return this.#spares.map((n) => n.name);
  }

  /**
   * Makes the spare namespaces in the background, up to the number asked
   * for (once this agent's leftovers are swept: their names are its own).
   * Resolves when they are made, or could not be.
   */
  fill(delayMs = 0): Promise<void> {
    if (this.#closed || this.#filling || this.#spares.length >= this.#spareTarget) {
      return this.#filling ?? Promise.resolve();
    }
    const filling = (async () => {
      if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
      while (!this.#closed && this.#spares.length < this.#spareTarget) {
        let net: PodNet;
        try {
          net = await this.#make(`${this.#prefix}-spare${++this.#spareSeq}`, "a spare");
          this.#fillFailed = false;
        } catch (err) {
          // The range full, say: pods make their own (and say why if they cannot); tried again
          // at the next start or end of a pod.
          if (!this.#fillFailed) {
            logger("nodeagent").warn("{error}; pod starts make their own until one can be made", {
              error: (err as Error).message,
            });
          }
          this.#fillFailed = true;
          return;
        }
        if (this.#closed) return await this.remove(net);
        this.#spares.push(net);
      }
    })();
    this.#filling = filling.finally(() => this.#filling = undefined);
    return this.#filling;
  }

  /**
   * Whether pod namespaces can be made here: root, `ip`, `nsenter` and
   * `unshare`, and a range no route of the host already covers.
   */
  async capability(): Promise<{ available: boolean; reason?: string }> {
    if (Deno.build.os !== "linux") return { available: false, reason: "Not Linux" };
    if (Deno.uid?.() !== 0) return { available: false, reason: "Network namespaces need root" };
    for (const tool of ["ip", "nsenter", "unshare", "setsid"]) {
      try {
        await run(tool, ["-V"]);
      } catch {
        return { available: false, reason: `${tool} is missing (iproute2, util-linux)` };
      }
    }
    const routes = await run("ip", ["-4", "route", "show", "table", "all"]).catch(() => "");
    const reason = routeConflict(routes, this.cidr);
    if (reason) return { available: false, reason };
    return { available: true };
  }

  /**
   * A namespace for pod `podId`: a spare made ahead when there is one (the
   * next is then made a moment later), else one made now.
   */
  async create(podId: string): Promise<PodNet> {
    for (let spare; (spare = this.#spares.shift());) {
      this.fill(REFILL_DELAY_MS).catch(() => {});
      if (await this.#intact(spare)) return spare;
      // Deleted from outside while it waited: its block may be another's by now.
      await this.remove(spare);
    }
    const net = await this.#make(`${this.#prefix}-${podId}`, `pod ${podId}`);
    this.fill(REFILL_DELAY_MS).catch(() => {});
    return net;
  }

  /** Whether a spare's namespace is still there, its block still claimed for it. */
  async #intact(net: PodNet): Promise<boolean> {
    return exists(net.nsPath) &&
      (await Deno.readTextFile(`${this.#claims}/${net.block}`).catch(() => "")) === net.name;
  }

  /** Claims a free /30 block, creates namespace `name` (for `what`) and its veth pair. */
  async #make(name: string, what: string): Promise<PodNet> {
    await Deno.mkdir(this.#claims, { recursive: true });
    for (let i = 1; i < this.#blocks; i++) {
      const claim = `${this.#claims}/${i}`;
      if (!await this.#claim(claim, name)) continue;
      const { host, pod } = blockAddrs(this.#base, i);
      const hostIf = hostIfName(this.#base, i);
      // Only what this call made is undone when a step fails: a link of the same name that is
      // there already (another agent's, on an overlapping range) is not ours to delete.
      let ownLink = false;
      try {
        // Two runs of `ip`, each a batch, not one a step: a process start is most of a step's
        // time (6.5 ms here, of 45 ms for the five steps one by one).
        this.#fenced = true;
        await run(
          "ip",
          ["-batch", "-"],
          [
            // At every namespace, not once: another agent of the range that stopped meanwhile, holding
            // no block at that moment, removed it.
            `route replace unreachable ${this.cidr}`,
            `netns add ${name}`,
            `link add ${hostIf} type veth peer name eth0 netns ${name}`,
            `addr add ${host}/30 dev ${hostIf}`,
            `link set ${hostIf} up`,
          ].join("\n") + "\n",
        ).catch((err) => {
          // The pair is this call's when a step after its own failed (`ip` names the line).
          const line = /Command failed -:(\d+)/.exec((err as Error).message)?.[1];
          ownLink = Number(line) > LINK_ADD_LINE;
          throw err;
        });
        ownLink = true;
        await run(
          "ip",
          ["-n", name, "-batch", "-"],
          [`addr add ${pod}/30 dev eth0`, "link set eth0 up", "link set lo up"].join("\n") + "\n",
        );
      } catch (err) {
        await this.#teardown(name, ownLink ? hostIf : "");
        await Deno.remove(claim).catch(() => {});
        throw new InferxError(
          "unavailable",
          `Cannot create the network namespace of ${what}: ${(err as Error).message}`,
        );
      }
      return { name, nsPath: `/run/netns/${name}`, hostIf, hostAddr: host, podAddr: pod, block: i };
    }
    throw new InferxError("unavailable", `Cannot create a pod network: ${this.cidr} is full`);
  }

  /**
   * Takes `claim` for `name`; a claim whose namespace is gone (and is not
   * new) is taken over, by one taker only: under a lock file made with
   * O_EXCL, whose holder looks at the claim again and writes over it (a
   * remove and a create would let a slower taker remove the claim a faster
   * one had just made, and both would take the block).
   */
  async #claim(claim: string, name: string): Promise<boolean> {
    try {
      await Deno.writeTextFile(claim, name, { createNew: true });
      return true;
    } catch (err) {
      if (!(err instanceof Deno.errors.AlreadyExists)) throw err;
    }
    if (!await this.#stale(claim)) return false;
    const lock = `${claim}.lock`;
    try {
      await Deno.writeTextFile(lock, name, { createNew: true });
    } catch {
      // Another taker holds it; a lock left by a taker that died goes after a while.
      const st = await Deno.stat(lock).catch(() => undefined);
      if (st && Date.now() - (st.mtime?.getTime() ?? Date.now()) > STALE_MS) {
        await Deno.remove(lock).catch(() => {});
      }
      return false;
    }
    try {
      if (!await this.#stale(claim)) return false;
      await Deno.writeTextFile(claim, name);
      return true;
    } catch {
      return false;
    } finally {
      await Deno.remove(lock).catch(() => {});
    }
  }

  /** Whether `claim` names a namespace that is gone, and is not new. */
  async #stale(claim: string): Promise<boolean> {
    try {
      const [owner, stat] = await Promise.all([Deno.readTextFile(claim), Deno.stat(claim)]);
      const age = Date.now() - (stat.mtime?.getTime() ?? Date.now());
      return !exists(`/run/netns/${owner}`) && age >= STALE_MS;
    } catch {
      return false;
    }
  }

  /** Kills what still runs in the namespace, deletes it (its veth pair goes with it), frees its block. */
  async remove(net: Pick<PodNet, "name" | "hostIf" | "block">): Promise<void> {
    const claim = `${this.#claims}/${net.block}`;
    // The host end by its name only while the block is still this namespace's: one taken over
    // since (its namespace deleted from outside, its claim gone stale) has a pair of that name.
    const own = (await Deno.readTextFile(claim).catch(() => "")) === net.name;
    await this.#teardown(net.name, own ? net.hostIf : "");
    if (own) await Deno.remove(claim).catch(() => {});
    // A block freed: spares the range had no room for may fit now.
    this.fill(REFILL_DELAY_MS).catch(() => {});
  }

  /** Removes namespace `name` (and `hostIf`), killing what runs in it: how many it killed. */
  async #teardown(name: string, hostIf: string): Promise<number> {
    const pids = await run("ip", ["netns", "pids", name]).catch(() => "");
    let killed = 0;
    for (const p of pids.split(/\s+/).filter(Boolean)) {
      try {
        Deno.kill(Number(p), "SIGKILL");
        killed++;
      } catch {
        // gone
      }
    }
    // The host end is normally gone with the namespace; `-force`: each step whatever the one before.
    await run(
      "ip",
      ["-force", "-batch", "-"],
      `netns delete ${name}\n${hostIf ? `link delete ${hostIf}\n` : ""}`,
    ).catch(() => {});
    return killed;
  }

  /**
   * Once this agent's pods are gone (it stops): removes the range's
   * `unreachable` route and its claims directory, when no agent on this host
   * holds a block of the range any more.
   */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#filling;
    for (const net of this.#spares.splice(0)) await this.remove(net);
    if (!this.#fenced) return;
    this.#fenced = false;
    let held = 0;
    try {
      for (const _ of Deno.readDirSync(this.#claims)) held++;
    } catch {
      // none
    }
    if (held) return;
    await run("ip", ["route", "del", "unreachable", this.cidr]).catch(() => {});
    await Deno.remove(this.#claims).catch(() => {});
  }

  /**
   * Removes this agent's namespaces left behind by an earlier run, and its
   * claims in every range (the earlier run's may have been another, or pod
   * namespaces may be off now). Routes are left as they are: a range with no
   * claim may still be an agent's that runs with no pod at the moment, and
   * the addresses of a gone run's pods stay fenced. Returns how many
   * pods' namespaces it removed (spares made ahead not counted).
   */
  async sweep(): Promise<number> {
    let n = 0;
    // This run's own idle spares are not left behind (it sweeps before it makes any: at
    // its start, before the first fill).
    const spares = new Set(this.spares);
    const listed = await run("ip", ["netns", "list"]).catch(() => "");
    for (const line of listed.split("\n")) {
      const name = line.trim().split(/\s+/)[0];
      if (!name?.startsWith(`${this.#prefix}-`) || spares.has(name)) continue;
      const killed = await this.#teardown(name, "");
      // A pod's: named after it, or a spare one was given (something ran in it).
      if (killed > 0 || !name.startsWith(`${this.#prefix}-spare`)) n++;
    }
    let ranges: string[] = [];
    try {
      ranges = [...Deno.readDirSync(this.#stateDir)].filter((e) => e.isDirectory).map((e) =>
        e.name
      );
    } catch {
      // none yet
    }
    for (const range of ranges) {
      const dir = `${this.#stateDir}/${range}`;
      let entries: Deno.DirEntry[] = [];
      try {
        entries = [...Deno.readDirSync(dir)];
      } catch {
        continue; // gone meanwhile
      }
      for (const e of entries) {
        const owner = await Deno.readTextFile(`${dir}/${e.name}`).catch(() => "");
        if (owner.startsWith(`${this.#prefix}-`) && !spares.has(owner)) {
          await Deno.remove(`${dir}/${e.name}`).catch(() => {});
        }
      }
    }
    return n;
  }
}
