/**
 * Keeps workers from the node's own ports.
 *
 * A worker reaches every address of its host through the interface its
 * traffic comes in by: a Docker container through its bridge, a process
 * runtime's pod through its veth pair's host end. Through it, the node's
 * own addresses answer, and so does anything a listener bound to `0.0.0.0`
 * serves (a node agent's or a state service's gRPC, which take any caller,
 * etcd, a gateway's port without its auth in front of it). No option of the
 * engine's bridge driver turns that off (`enable_icc=false` keeps
 * containers from each other only). So the agent sends what comes in by the
 * workers' interfaces, at the head of the node's `INPUT` chain (iptables and
 * ip6tables), through a chain of its own, {@linkcode FENCE_CHAIN}: a
 * connection a worker opens to the node is refused, but for DNS (port 53:
 * a resolver on one of the node's addresses, such as Kubernetes' node-local
 * DNS cache, which the engine's DNS for containers forwards to from inside
 * the container). The answers of the node's own connections to the workers
 * (a gateway calling a published port, an agent's probe) are not new
 * connections and pass.
 *
 * The rule can only be put where the interfaces are: the agent must run in
 * the node's network namespace, as root (or with `CAP_NET_ADMIN`). An agent
 * in a container of its own, or one that may not change the firewall, says
 * so in its log with the commands to run by hand ({@linkcode fenceCommands}).
 *
 * @module
 */

/** The chain the workers' connections to the node go through. */
export const FENCE_CHAIN = "INFERX-WORKERS";

/** Any new connection refused. */
const REFUSE_NEW = ["-m", "conntrack", "--ctstate", "NEW", "-j", "REJECT"];

/** The chain's rules, in order: DNS passes on, any other new connection is refused. */
const CHAIN_RULES = [
  ["-p", "udp", "--dport", "53", "-j", "RETURN"],
  ["-p", "tcp", "--dport", "53", "-j", "RETURN"],
  REFUSE_NEW,
];

/** An earlier release's whole fence for `name`: one rule in `INPUT`, DNS refused too. */
const earlierRule = (name: string) => ["INPUT", "-i", name, ...REFUSE_NEW];

/**
 * The jump (its arguments after the chain operation) that sends what comes
 * in by interface `name` (iptables' `prefix+` for every interface whose name
 * starts so) through {@linkcode FENCE_CHAIN}.
 */
export function fenceJump(name: string): string[] {
  return ["INPUT", "-i", name, "-j", FENCE_CHAIN];
}

/** The commands that fence `name` off the node, for an operator to run by hand. */
export function fenceCommands(name: string): string {
  return [
    `iptables -N ${FENCE_CHAIN}`,
    ...CHAIN_RULES.map((r) => `iptables -A ${FENCE_CHAIN} ${r.join(" ")}`),
    `iptables -I ${fenceJump(name).join(" ")}`,
  ].join("; ") + " (and the same with ip6tables)";
}

/** What a command did: whether it succeeded, its output and its error output. */
export interface CommandResult {
  ok: boolean;
  out?: string;
  err: string;
}

/** Runs a command. */
export type CommandRunner = (cmd: string, args: string[]) => Promise<CommandResult>;

async function runCommand(cmd: string, args: string[]): Promise<CommandResult> {
  try {
    const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
    const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes).trim();
    return { ok: out.success, out: text(out.stdout), err: text(out.stderr) };
  } catch (err) {
    return { ok: false, err: (err as Error).message };
  }
}

/**
 * Whether a chain listed by `iptables -S` (`-N` line, then one `-A` line a
 * rule) holds as many rules as {@linkcode CHAIN_RULES} with the refusal
 * last. Together with each rule found by `-C`, the chain is then exactly
 * the fence: a rule put in front of the refusal by hand (an `ACCEPT`), or
 * the refusal moved up ahead of DNS, makes it no longer so.
 */
function inOrder(listing: string): boolean {
  const rules = listing.split("\n").filter((line) => line.startsWith("-A "));
  return rules.length === CHAIN_RULES.length && / -j REJECT\b/.test(rules[rules.length - 1]);
}

/** Whether network interface `name` is in this process's network namespace. */
function interfaceHere(name: string): boolean {
  try {
    Deno.statSync(`/sys/class/net/${name}`);
    return true;
  } catch {
    return false;
  }
}

/** Host ends of the process runtime's pod pairs (`pod_net.ts` names them `ixh...`). */
export const POD_HOST_ENDS = "ixh+";

/**
 * Fences the Docker workers' bridge off the node ({@linkcode fenceInterface}),
 * once it is seen in this agent's network namespace: an agent in a container
 * of its own would fence its own namespace, which holds nothing back.
 */
export async function fenceBridge(
  bridge: string,
  options: { run?: CommandRunner; interfaceHere?: (name: string) => boolean } = {},
): Promise<string[]> {
  if (!(options.interfaceHere ?? interfaceHere)(bridge)) {
    return [
      `the workers' bridge ${bridge} is not in this agent's network namespace (it runs in a ` +
      `container of its own)`,
    ];
  }
  return await fenceInterface(bridge, options);
}

/**
 * Fences interface `name` off the node, in iptables and ip6tables: makes
 * {@linkcode FENCE_CHAIN} with its rules unless they are there, in order and
 * alone (a chain found otherwise is made again),
 * and the jump to it from `INPUT` unless it is there. Why it could not, for
 * each tool that failed; an empty list when it is fenced.
 */
export async function fenceInterface(
  name: string,
  options: { run?: CommandRunner } = {},
): Promise<string[]> {
  const run = options.run ?? runCommand;
  const problems: string[] = [];
  for (const cmd of ["iptables", "ip6tables"]) {
    // `-w`: wait for the lock another program (the engine) holds, rather than fail.
    const ipt = (...args: string[]) => run(cmd, ["-w", "5", ...args]);
    const why = await (async () => {
      if (!(await ipt("-S", FENCE_CHAIN)).ok) {
        const made = await ipt("-N", FENCE_CHAIN);
        // Made meanwhile by another agent: fine, its rules are looked at below.
        if (!made.ok && !(await ipt("-S", FENCE_CHAIN)).ok) return made.err;
      }
      let whole = true;
      for (const rule of CHAIN_RULES) {
        if (!(await ipt("-C", FENCE_CHAIN, ...rule)).ok) whole = false;
      }
      if (whole) whole = inOrder((await ipt("-S", FENCE_CHAIN)).out ?? "");
      if (!whole) {
        // Made again in order (one put alone would land after the refusal; one an operator put
        // ahead of it would let through what it refuses).
        const flushed = await ipt("-F", FENCE_CHAIN);
        if (!flushed.ok) return flushed.err;
        for (const rule of CHAIN_RULES) {
          const put = await ipt("-A", FENCE_CHAIN, ...rule);
          if (!put.ok) return put.err;
        }
      }
      // The one rule of an earlier release, which refused DNS too, goes (behind the jump, it
      // would still refuse what the chain lets pass).
      for (let i = 0; i < 8 && (await ipt("-C", ...earlierRule(name))).ok; i++) {
        await ipt("-D", ...earlierRule(name));
      }
      if ((await ipt("-C", ...fenceJump(name))).ok) return undefined;
      const jump = await ipt("-I", ...fenceJump(name));
      return jump.ok ? undefined : jump.err;
    })();
    if (why !== undefined) problems.push(`${cmd} failed: ${why || "no reason given"}`);
  }
  return problems;
}
