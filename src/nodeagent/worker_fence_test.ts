import assert from "node:assert/strict";
import { fenceInterface, fenceRule } from "./worker_fence.ts";

/** A firewall of fake commands: the rules put, and which commands fail. */
function fakeFirewall(fails: Set<string> = new Set()) {
  const rules = new Set<string>();
  const calls: string[] = [];
  const run = (cmd: string, args: string[]) => {
    calls.push(`${cmd} ${args.join(" ")}`);
    if (fails.has(cmd)) return Promise.resolve({ ok: false, err: `${cmd}: Permission denied` });
    const [, , op, ...rule] = args;
    const key = `${cmd} ${rule.join(" ")}`;
    if (op === "-C") return Promise.resolve({ ok: rules.has(key), err: "" });
    rules.add(key);
    return Promise.resolve({ ok: true, err: "" });
  };
  return { rules, calls, run };
}

Deno.test("fenceInterface() puts the rule once in iptables and ip6tables", async () => {
  const fw = fakeFirewall();
  const options = { run: fw.run, interfaceHere: () => true };
  assert.deepEqual(await fenceInterface("inferx-workers", options), []);
  assert.deepEqual(await fenceInterface("inferx-workers", options), []);
  const rule = fenceRule("inferx-workers").join(" ");
  assert.equal(rule, "INPUT -i inferx-workers -m conntrack --ctstate NEW -j REJECT");
  assert.deepEqual([...fw.rules], [`iptables ${rule}`, `ip6tables ${rule}`]);
  // Checked first each time, put only when missing: an agent's restart adds no second rule.
  assert.deepEqual(fw.calls.filter((c) => c.includes(" -I ")), [
    `iptables -w 5 -I ${rule}`,
    `ip6tables -w 5 -I ${rule}`,
  ]);
});

Deno.test("fenceInterface() says why it could not fence", async () => {
  const fw = fakeFirewall(new Set(["ip6tables"]));
  assert.deepEqual(
    await fenceInterface("br-0123456789ab", { run: fw.run, interfaceHere: () => true }),
    ["ip6tables failed: ip6tables: Permission denied"],
  );
  // An agent in a container of its own: a rule put there would hold nothing back.
  const elsewhere = fakeFirewall();
  const problems = await fenceInterface("inferx-workers", {
    run: elsewhere.run,
    interfaceHere: () => false,
  });
  assert.match(problems[0], /not in this agent's network namespace/);
  assert.deepEqual(elsewhere.calls, []);
});
