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
 * containers from each other only). So the agent puts one rule at the head
 * of the node's `INPUT` chain (iptables and ip6tables) for the workers'
 * interfaces: a connection a worker opens to the node is refused. The
 * answers of the node's own connections to the workers (a gateway calling
 * a published port, an agent's probe) are not new connections and pass; the
 * engine's DNS for containers is served inside each container's namespace,
 * not here.
 *
 * The rule can only be put where the interfaces are: the agent must run in
 * the node's network namespace, as root (or with `CAP_NET_ADMIN`). An agent
 * in a container of its own, or one that may not change the firewall, says
 * so in its log with the rule to put by hand ({@linkcode fenceRule}).
 *
 * @module
 */

/**
 * The rule (its arguments after the chain operation) that refuses the
 * connections coming in by interface `name` (iptables' `prefix+` for every
 * interface whose name starts so).
 */
export function fenceRule(name: string): string[] {
  return ["INPUT", "-i", name, "-m", "conntrack", "--ctstate", "NEW", "-j", "REJECT"];
}

/** Runs a command; whether it succeeded, and its error output. */
export type CommandRunner = (cmd: string, args: string[]) => Promise<{ ok: boolean; err: string }>;

async function runCommand(cmd: string, args: string[]): Promise<{ ok: boolean; err: string }> {
  try {
    const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
    return { ok: out.success, err: new TextDecoder().decode(out.stderr).trim() };
  } catch (err) {
    return { ok: false, err: (err as Error).message };
  }
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
 * Puts the rule of {@linkcode fenceRule} for interface `name` in iptables
 * and ip6tables unless it is there already. Why it could not, for each that
 * failed; an empty list when it is fenced. A bridge's name is checked to be
 * in this agent's network namespace first (not `POD_HOST_ENDS`, which this
 * agent itself makes there).
 */
export async function fenceInterface(
  name: string,
  options: { run?: CommandRunner; interfaceHere?: (name: string) => boolean } = {},
): Promise<string[]> {
  const run = options.run ?? runCommand;
  if (name !== POD_HOST_ENDS && !(options.interfaceHere ?? interfaceHere)(name)) {
    return [
      `the workers' bridge ${name} is not in this agent's network namespace (it runs in a ` +
      `container of its own)`,
    ];
  }
  const problems: string[] = [];
  for (const cmd of ["iptables", "ip6tables"]) {
    const rule = fenceRule(name);
    // `-w`: wait for the lock another program (the engine) holds, rather than fail.
    if ((await run(cmd, ["-w", "5", "-C", ...rule])).ok) continue;
    const put = await run(cmd, ["-w", "5", "-I", ...rule]);
    if (!put.ok) problems.push(`${cmd} failed: ${put.err || "no reason given"}`);
  }
  return problems;
}
