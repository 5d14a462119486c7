import assert from "node:assert/strict";
import {
  FENCE_CHAIN,
  fenceBridge,
  fenceCommands,
  fenceInterface,
  POD_HOST_ENDS,
} from "./worker_fence.ts";

/** A firewall of fake commands: chains of rules, and which commands fail. */
function fakeFirewall(fails: Set<string> = new Set()) {
  const tables = new Map<string, Map<string, string[]>>();
  const calls: string[] = [];
  const run = (cmd: string, args: string[]) => {
    calls.push(`${cmd} ${args.slice(2).join(" ")}`);
    if (fails.has(cmd)) return Promise.resolve({ ok: false, err: `${cmd}: Permission denied` });
    const chains = tables.get(cmd) ?? new Map([["INPUT", []]]);
    tables.set(cmd, chains);
    const [, , op, chain, ...rule] = args;
    const rules = chains.get(chain);
    const r = rule.join(" ");
    const ok = (v: boolean) => Promise.resolve({ ok: v, err: v ? "" : "No chain/target/match" });
    switch (op) {
      case "-S":
        if (rules === undefined) return ok(false);
        // As iptables lists a chain: its `-N` line, then a line a rule.
        return Promise.resolve({
          ok: true,
          out: [`-N ${chain}`, ...rules.map((x) => `-A ${chain} ${x}`)].join("\n"),
          err: "",
        });
      case "-N":
        if (rules) return ok(false);
        chains.set(chain, []);
        return ok(true);
      case "-F":
        rules?.splice(0);
        return ok(rules !== undefined);
      case "-C":
        return ok(rules?.includes(r) ?? false);
      case "-A":
        rules?.push(r);
        return ok(rules !== undefined);
      case "-I":
        rules?.unshift(r);
        return ok(rules !== undefined);
      case "-D": {
        const at = rules?.indexOf(r) ?? -1;
        if (at >= 0) rules!.splice(at, 1);
        return ok(at >= 0);
      }
    }
    return ok(false);
  };
  return { tables, calls, run };
}

const CHAIN = [
  "-p udp --dport 53 -j RETURN",
  "-p tcp --dport 53 -j RETURN",
  "-m conntrack --ctstate NEW -j REJECT",
];

Deno.test("fenceInterface() makes the chain once and jumps to it from INPUT, in iptables and ip6tables", async () => {
  const fw = fakeFirewall();
  const options = { run: fw.run };
  assert.deepEqual(await fenceInterface("inferx-workers", options), []);
  assert.deepEqual(await fenceInterface(POD_HOST_ENDS, options), []);
  assert.deepEqual(await fenceInterface("inferx-workers", options), []);
  for (const cmd of ["iptables", "ip6tables"]) {
    const chains = fw.tables.get(cmd)!;
    // DNS passes on (a resolver on the node's address), any other new connection is refused.
    assert.deepEqual(chains.get(FENCE_CHAIN), CHAIN);
    assert.deepEqual(chains.get("INPUT"), [
      `-i ixh+ -j ${FENCE_CHAIN}`,
      `-i inferx-workers -j ${FENCE_CHAIN}`,
    ]);
  }
  // Looked at first each time, put only when missing: an agent's restart adds nothing.
  assert.equal(fw.calls.filter((c) => / -[AIN] /.test(` ${c} `)).length, 2 * (1 + 3 + 2));
});

Deno.test("fenceInterface() puts a chain found partial back in order", async () => {
  const fw = fakeFirewall();
  const options = { run: fw.run };
  await fenceInterface("inferx-workers", options);
  // Say an operator removed the DNS rules: put back alone, they would come after the refusal.
  fw.tables.get("iptables")!.set(FENCE_CHAIN, [CHAIN[2]]);
  assert.deepEqual(await fenceInterface("inferx-workers", options), []);
  assert.deepEqual(fw.tables.get("iptables")!.get(FENCE_CHAIN), CHAIN);
  assert.deepEqual(fw.tables.get("iptables")!.get("INPUT"), [
    `-i inferx-workers -j ${FENCE_CHAIN}`,
  ]);
});

Deno.test("fenceInterface() makes a chain again whose rules are all there but out of order or with others", async () => {
  const fw = fakeFirewall();
  const options = { run: fw.run };
  await fenceInterface("inferx-workers", options);
  const chain = () => fw.tables.get("iptables")!.get(FENCE_CHAIN)!;
  // The refusal moved ahead of DNS: a resolver on the node's address would be refused.
  chain().splice(0, 3, CHAIN[2], CHAIN[0], CHAIN[1]);
  assert.deepEqual(await fenceInterface("inferx-workers", options), []);
  assert.deepEqual(chain(), CHAIN);
  // A rule of an operator's put in front: it lets through what the chain refuses.
  chain().unshift("-p tcp --dport 1237 -j ACCEPT");
  assert.deepEqual(await fenceInterface("inferx-workers", options), []);
  assert.deepEqual(chain(), CHAIN);
  // In order and alone, the chain is not touched.
  const before = fw.calls.length;
  assert.deepEqual(await fenceInterface("inferx-workers", options), []);
  assert.equal(fw.calls.slice(before).filter((c) => / -[AFIN] /.test(` ${c} `)).length, 0);
});

Deno.test("fenceInterface() takes an earlier release's one rule away, which refused DNS behind the jump", async () => {
  const fw = fakeFirewall();
  const earlier = "-i inferx-workers -m conntrack --ctstate NEW -j REJECT";
  fw.tables.set("iptables", new Map([["INPUT", ["-i ixh+ -j ACCEPT", earlier]]]));
  assert.deepEqual(
    await fenceInterface("inferx-workers", { run: fw.run }),
    [],
  );
  assert.deepEqual(fw.tables.get("iptables")!.get("INPUT"), [
    `-i inferx-workers -j ${FENCE_CHAIN}`,
    "-i ixh+ -j ACCEPT",
  ]);
});

Deno.test("fenceInterface() says why it could not fence, and how to by hand", async () => {
  const fw = fakeFirewall(new Set(["ip6tables"]));
  assert.deepEqual(
    await fenceInterface("br-0123456789ab", { run: fw.run }),
    ["ip6tables failed: ip6tables: Permission denied"],
  );
  // An agent in a container of its own: a rule put there would hold nothing back.
  const elsewhere = fakeFirewall();
  const problems = await fenceBridge("inferx-workers", {
    run: elsewhere.run,
    interfaceHere: () => false,
  });
  assert.match(problems[0], /not in this agent's network namespace/);
  assert.deepEqual(elsewhere.calls, []);
  assert.equal(
    fenceCommands("inferx-workers"),
    `iptables -N ${FENCE_CHAIN}; iptables -A ${FENCE_CHAIN} -p udp --dport 53 -j RETURN; ` +
      `iptables -A ${FENCE_CHAIN} -p tcp --dport 53 -j RETURN; ` +
      `iptables -A ${FENCE_CHAIN} -m conntrack --ctstate NEW -j REJECT; ` +
      `iptables -I INPUT -i inferx-workers -j ${FENCE_CHAIN} (and the same with ip6tables)`,
  );
});
