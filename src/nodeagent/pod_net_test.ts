import assert from "node:assert/strict";
import { parsePodCidr as parseCidr } from "../common/cidr.ts";
import { until } from "../common/testing.ts";
import {
  blockAddrs,
  hostIfName,
  ipString,
  type PodNet,
  PodNetworks,
  rangesOverlap,
  routeConflict,
} from "./pod_net.ts";

Deno.test("parseCidr() takes a private IPv4 range and refuses what it cannot split into /30 blocks", () => {
  assert.deepEqual(parseCidr("10.213.0.0/16"), { base: 0x0ad50000, bits: 16 });
  assert.equal(ipString(parseCidr("10.213.7.0/24").base), "10.213.7.0");
  for (const bad of ["10.213.0.0", "10.213.0.0/8", "10.213.0.0/30", "300.1.1.1/16", "::1/64"]) {
    assert.throws(() => parseCidr(bad), /Invalid pod network/, bad);
  }
  // An address past the range's start: `ip` would refuse it in every pod's address.
  assert.throws(
    () => parseCidr("10.213.7.9/24"),
    /"10\.213\.7\.9\/24": its address has bits set past \/24 \(the range is 10\.213\.7\.0\/24\)/,
  );
});

Deno.test("routeConflict() passes over pods' routes, this range's fence and routes of a device gone", () => {
  const cidr = "10.213.7.0/24";
  const fine = [
    "default via 172.17.0.1 dev eth0",
    "10.213.7.4/30 dev ixh3a9f proto kernel scope link src 10.213.7.5",
    "unreachable 10.213.7.0/24",
    // A pod's host end a restart's sweep has just deleted: gone in a moment, not a host route.
    "10.213.7.48/30 dev if10776 proto kernel scope link src 10.213.7.49",
    "local 127.0.0.1 dev lo table local proto kernel scope host src 127.0.0.1",
    "192.168.1.0/24 dev eth1 proto kernel scope link src 192.168.1.2",
  ].join("\n");
  assert.equal(routeConflict(fine, cidr), undefined);
  assert.match(
    routeConflict(`${fine}\n10.213.0.0/16 dev br0 scope link`, cidr)!,
    /overlaps the host route 10\.213\.0\.0\/16 \(set INFERX_POD_CIDR\)$/,
  );
  assert.match(
    routeConflict("unreachable 10.213.0.0/16", cidr)!,
    /another agent's pod range, or one an earlier run left/,
  );
});

Deno.test("blockAddrs() gives block i the host end .4i+1 and the pod end .4i+2", () => {
  const { base } = parseCidr("10.213.0.0/16");
  assert.deepEqual(blockAddrs(base, 1), { host: "10.213.0.5", pod: "10.213.0.6" });
  assert.deepEqual(blockAddrs(base, 64), { host: "10.213.1.1", pod: "10.213.1.2" });
});

Deno.test("rangesOverlap() tells a host route that covers the pod range", () => {
  const cases: [string, string, boolean][] = [
    ["10.213.0.0/16", "10.213.0.0/16", true],
    ["10.0.0.0/8", "10.213.0.0/16", true],
    ["10.213.4.0/24", "10.213.0.0/16", true],
    ["10.214.0.0/16", "10.213.0.0/16", false],
    ["172.17.0.0/16", "10.213.0.0/16", false],
    ["10.213.0.9", "10.213.0.0/16", true],
  ];
  for (const [a, b, want] of cases) assert.equal(rangesOverlap(a, b), want, `${a} ${b}`);
});

/** What `ip ARGS` prints. */
function ipOut(...args: string[]): string {
  return new TextDecoder().decode(
    new Deno.Command("ip", { args, stdout: "piped" }).outputSync().stdout,
  );
}

const nets = new PodNetworks({ prefix: "ixnettest" });
const cap = await nets.capability();
if (!cap.available) console.log(`skipping the pod network test: ${cap.reason}`);

/** A test that needs pod namespaces, given a directory for block claims (removed after it). */
function netTest(name: string, fn: (dir: string) => Promise<void>): void {
  Deno.test({
    name,
    ignore: !cap.available,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const dir = await Deno.makeTempDir();
      try {
        await fn(dir);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}

Deno.test({
  name:
    "PodNetworks gives each pod a namespace of its own, reachable from the host only at its address",
  ignore: !cap.available,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const a = await nets.create("a");
    const b = await nets.create("b");
    try {
      assert.notEqual(a.podAddr, b.podAddr);
      assert.notEqual(a.hostIf, b.hostIf);
      // The same port in both namespaces, each answering at its own address.
      const servers = [a, b].map((n) =>
        new Deno.Command("nsenter", {
          args: [
            `--net=${n.nsPath}`,
            "--",
            Deno.execPath(),
            "eval",
            `Deno.serve({ port: 8000, hostname: "0.0.0.0", onListen() {} }, () => new Response("${n.name}"))`,
          ],
          stdout: "null",
          stderr: "null",
        }).spawn()
      );
      try {
        for (const n of [a, b]) {
          let body = "";
          for (let i = 0; i < 100 && !body; i++) {
            body = await fetch(`http://${n.podAddr}:8000/`).then((r) => r.text()).catch(() => "");
            if (!body) await new Promise((r) => setTimeout(r, 50));
          }
          assert.equal(body, n.name);
        }
        // No default route: a pod reaches nothing beyond its host end.
        const routes = ipOut("-n", a.name, "route");
        assert.doesNotMatch(routes, /default/);
      } finally {
        for (const s of servers) (s.kill("SIGKILL"), await s.status);
      }
    } finally {
      await nets.remove(a);
      await nets.remove(b);
    }
    const listed = ipOut("netns", "list");
    assert.doesNotMatch(listed, /ixnettest-/);
    // A freed block is handed out again.
    const c = await nets.create("c");
    assert.equal(c.podAddr, a.podAddr);
    await nets.remove(c);
  },
});

netTest(
  "PodNetworks leaves no route or claims directory behind once its last pod is gone",
  async (dir) => {
    const cidr = "10.219.7.0/24";
    const routes = () => ipOut("route", "show", "type", "unreachable");
    const mine = new PodNetworks({ prefix: "ixclose", cidr, stateDir: dir });
    const other = new PodNetworks({ prefix: "ixother", cidr, stateDir: dir });
    try {
      const a = await mine.create("a");
      const b = await other.create("b");
      assert.match(routes(), /unreachable 10\.219\.7\.0\/24/);
      await mine.remove(a);
      await mine.close();
      assert.match(routes(), /10\.219\.7\.0\/24/, "kept while another agent holds a block");
      await other.remove(b);
      await other.close();
      assert.doesNotMatch(routes(), /10\.219\.7\.0\/24/);
      assert.deepEqual([...Deno.readDirSync(dir)], [], "the claims directory went too");
    } finally {
      await new Deno.Command("ip", { args: ["route", "del", "unreachable", cidr] }).output();
    }
  },
);

netTest(
  "PodNetworks keeps spare namespaces made ahead: a start takes one, the next is made after, a stop removes them",
  async (dir) => {
    const cidr = "10.219.9.0/24";
    const listed = () => ipOut("netns", "list").split("\n").map((l) => l.split(" ")[0]);
    const nets = new PodNetworks({ prefix: "ixspare", cidr, stateDir: dir, spares: 1 });
    const small = new PodNetworks({
      prefix: "ixsmall",
      cidr: "10.219.10.0/28",
      stateDir: dir,
      spares: 1,
    });
    const made: PodNet[] = [];
    try {
      await small.fill();
      assert.deepEqual(small.spares, [], "none kept in a range of 4 blocks");
      await nets.fill();
      const [spare] = nets.spares;
      assert.match(spare, /^ixspare-spare\d+$/);
      assert.ok(listed().includes(spare));
      // The sweep of an earlier run's leftovers leaves this run's spares alone.
      await nets.sweep();
      assert.deepEqual(nets.spares, [spare]);
      assert.ok(listed().includes(spare));
      {
        // An earlier run killed with a pod in a spare it was given, and one spare idle: both go,
        // and the pod's is counted (its worker ended with it).
        const earlier = new PodNetworks({
          prefix: "ixgone",
          cidr: "10.219.11.0/24",
          stateDir: dir,
          spares: 2,
        });
        await earlier.fill();
        const [given, idle] = earlier.spares;
        const pod = await earlier.create("p");
        assert.equal(pod.name, given);
        await earlier.fill(); // the spare made after the start, idle too
        const worker = new Deno.Command("ip", {
          args: ["netns", "exec", pod.name, "sleep", "600"],
          stdout: "null",
          stderr: "null",
        }).spawn();
        await until(
          "the worker in its namespace",
          async () =>
            (await new Deno.Command("ip", { args: ["netns", "pids", pod.name] }).output()).stdout
              .length > 0,
        );
        const next = new PodNetworks({ prefix: "ixgone", cidr: "10.219.11.0/24", stateDir: dir });
        assert.equal(await next.sweep(), 1, "the pod's namespace, not the idle spare");
        assert.ok(!listed().some((n) => n.startsWith("ixgone-")), String(idle));
        assert.equal((await worker.status).signal, "SIGKILL");
        // What a killed run leaves for good (see the sweep's test): its range's fence and folder.
        await new Deno.Command("ip", { args: ["route", "del", "unreachable", "10.219.11.0/24"] })
          .output();
        await Deno.remove(`${dir}/10.219.11.0_24`, { recursive: true });
      }

      const a = await nets.create("a");
      made.push(a);
      assert.equal(a.name, spare, "the start took the spare");
      assert.deepEqual(nets.spares, [], "and it is a pod's now");
      assert.match(
        ipOut("-n", a.name, "-4", "addr", "show", "dev", "eth0"),
        /inet 10\.219\.9\.\d+\/30/,
      );
      await nets.fill(); // the next one, made a moment after the start
      const [next] = nets.spares;
      assert.ok(next && next !== spare);
      const b = await nets.create("b");
      made.push(b);
      assert.equal(b.name, next);
      assert.notEqual(b.podAddr, a.podAddr);
      await nets.fill();
      // A spare deleted from outside while it waited is not handed out.
      const [broken] = nets.spares;
      await new Deno.Command("ip", { args: ["netns", "delete", broken] }).output();
      const c = await nets.create("c");
      made.push(c);
      assert.notEqual(c.name, broken);
      assert.ok(listed().includes(c.name));
      assert.match(ipOut("-n", c.name, "-4", "addr", "show", "dev", "eth0"), /inet 10\.219\.9\./);
      await nets.fill();
      const [left] = nets.spares;
      for (const n of made.splice(0)) await nets.remove(n);
      await nets.close();
      assert.equal(listed().includes(left), false, "the stop removed the spare");
      assert.equal(listed().some((n) => n.startsWith("ixspare-")), false);
      assert.deepEqual([...Deno.readDirSync(dir)], [], "no claim left");
      // Stopped, it makes none again.
      await nets.fill();
      assert.deepEqual(nets.spares, []);
    } finally {
      for (const n of made) await nets.remove(n);
      await nets.close();
      await small.close();
      await new Deno.Command("ip", { args: ["route", "del", "unreachable", cidr] }).output();
    }
  },
);

Deno.test({
  name: "PodNetworks: two agents taking over one stale claim together get different blocks",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    // `ip` stubbed (nothing made on the host): what is tested is the claims.
    const dir = await Deno.makeTempDir();
    const bin = `${dir}/bin`;
    await Deno.mkdir(bin);
    await Deno.writeTextFile(`${bin}/ip`, "#!/bin/sh\ncat >/dev/null 2>&1\nexit 0\n");
    await Deno.chmod(`${bin}/ip`, 0o755);
    const path = Deno.env.get("PATH") ?? "";
    Deno.env.set("PATH", `${bin}:${path}`);
    const cidr = "10.213.0.0/24";
    const claims = `${dir}/${cidr.replace("/", "_")}`;
    await Deno.mkdir(claims, { recursive: true });
    // A claim left by an agent that died two minutes ago.
    await Deno.writeTextFile(`${claims}/1`, "ixdead-p-gone");
    const old = new Date(Date.now() - 120_000);
    await Deno.utime(`${claims}/1`, old, old);
    // The first removal of a claim file of a round is slow (a busy disk, a descheduled
    // thread): where taking over meant removing the old claim and making a new one, the
    // slower taker then removed the claim the faster one had just made.
    const remove = Deno.remove;
    let slowed = false;
    const slowRemove = async (p: string | URL, o?: Deno.RemoveOptions) => {
      if (!slowed && String(p).startsWith(`${claims}/`)) {
        slowed = true;
        await new Promise((r) => setTimeout(r, 20));
      }
      return await remove(p, o);
    };
    Object.assign(Deno, { remove: slowRemove });
    try {
      for (let round = 0; round < 20; round++) {
        slowed = false;
        const a = new PodNetworks({ prefix: "ixaaaa", cidr, stateDir: dir });
        const b = new PodNetworks({ prefix: "ixbbbb", cidr, stateDir: dir });
        const [na, nb] = await Promise.all([a.create(`p${round}`), b.create(`q${round}`)]);
        assert.notEqual(na.podAddr, nb.podAddr, `round ${round}`);
        assert.notEqual(na.hostIf, nb.hostIf, `round ${round}`);
        // Stale again for the next round.
        for (const n of [na, nb]) {
          await Deno.writeTextFile(`${claims}/${n.block}`, "ixdead-p-gone");
          await Deno.utime(`${claims}/${n.block}`, old, old);
        }
      }
    } finally {
      Object.assign(Deno, { remove });
      Deno.env.set("PATH", path);
      await Deno.remove(dir, { recursive: true });
    }
  },
});

netTest(
  "PodNetworks refuses a range overlapping another agent's, keeps the range's fence while one runs, and names pairs apart across ranges",
  async (dir) => {
    const routes = () => ipOut("route", "show", "type", "unreachable");
    const a = new PodNetworks({ prefix: "ixova", cidr: "10.250.0.0/16", stateDir: dir });
    const b = new PodNetworks({ prefix: "ixovb", cidr: "10.250.0.0/16", stateDir: dir });
    const c = new PodNetworks({ prefix: "ixovc", cidr: "10.169.0.0/16", stateDir: dir });
    const made: [PodNetworks, Awaited<ReturnType<PodNetworks["create"]>>][] = [];
    try {
      made.push([a, await a.create("a1")]);
      // Inside A's range: its pods' addresses would be handed out twice.
      const inside = new PodNetworks({ prefix: "ixovd", cidr: "10.250.0.16/28", stateDir: dir });
      const refused = await inside.capability();
      assert.equal(refused.available, false);
      assert.match(refused.reason!, /overlaps the host route 10\.250\.0\.0\/16/);
      assert.equal((await b.capability()).available, true, "the same range is shared");
      // B is between pods when A stops: the fence goes, and B's next pod puts it back.
      await b.create("b1").then((n) => b.remove(n));
      await a.remove(made.pop()![1]);
      await a.close();
      made.push([b, await b.create("b2")]);
      assert.match(routes(), /unreachable 10\.250\.0\.0\/16/);
      // Block 1 of another /16 whose blocks count alike: its pair has a name of its own.
      const other = await c.create("c1");
      made.push([c, other]);
      assert.notEqual(other.hostIf, made[0][1].hostIf);
      assert.ok(other.hostIf.length <= 15);
    } finally {
      for (const [n, net] of made) await n.remove(net);
      for (const n of [a, b, c]) await n.close();
      for (const r of ["10.250.0.0/16", "10.169.0.0/16"]) {
        await new Deno.Command("ip", { args: ["route", "del", "unreachable", r] }).output();
      }
    }
  },
);

netTest(
  "an agent's sweep removes what an earlier run left on another range, and leaves every fence in place",
  async (dir) => {
    const [small, wide] = ["10.218.5.0/28", "10.218.0.0/16"];
    const routes = () => ipOut("route", "show", "type", "unreachable");
    const netns = () => ipOut("netns", "list");
    try {
      // An earlier run on the small range, killed: its namespace and claim are left.
      const killed = new PodNetworks({ prefix: "ixsweep", cidr: small, stateDir: dir });
      await killed.create("p1");
      assert.match(netns(), /ixsweep-p1/);
      // Another agent's claim on a range of its own stays.
      const other = new PodNetworks({ prefix: "ixkeep", cidr: "10.217.9.0/28", stateDir: dir });
      const kept = await other.create("p2");
      // Before, a run with pod namespaces off, or on another range, left them for good.
      const next = new PodNetworks({ prefix: "ixsweep", cidr: wide, stateDir: dir });
      assert.equal(await next.sweep(), 1);
      assert.doesNotMatch(netns(), /ixsweep-p1/);
      assert.deepEqual([...Deno.readDirSync(`${dir}/10.218.5.0_28`)], [], "its claim went");
      assert.deepEqual([...Deno.readDirSync(`${dir}/10.217.9.0_28`)].map((e) => e.name), ["1"]);
      // No fence is taken away: an idle agent's looks the same as a gone run's, and the gone
      // pod's address must lead nowhere. The operator is told how to remove a stale one.
      assert.match(routes(), /unreachable 10\.218\.5\.0\/28/);
      assert.match(routes(), /unreachable 10\.217\.9\.0\/28/);
      assert.match(
        (await next.capability()).reason ?? "",
        /overlaps the host route 10\.218\.5\.0\/28 \(set INFERX_POD_CIDR; .*ip route del unreachable 10\.218\.5\.0\/28\)/,
      );
      await other.remove(kept);
      await other.close();
    } finally {
      for (const cidr of [small, wide, "10.217.9.0/28"]) {
        await new Deno.Command("ip", {
          args: ["route", "del", "unreachable", cidr],
          stderr: "null",
        })
          .output();
      }
      for (const ns of ["ixsweep-p1", "ixkeep-p2"]) {
        await new Deno.Command("ip", { args: ["netns", "delete", ns], stderr: "null" }).output();
      }
    }
  },
);

netTest(
  "PodNetworks: a pod whose pair's name is taken fails, leaving the link that was there and freeing its block",
  async (dir) => {
    const cidr = "10.219.11.0/24";
    const taken = hostIfName(parseCidr(cidr).base, 1); // the pair of the range's first block
    const ip = (...args: string[]) =>
      new Deno.Command("ip", { args, stdout: "null", stderr: "null" }).output();
    const nets = new PodNetworks({ prefix: "ixclash", cidr, stateDir: dir });
    const made = await ip("link", "add", taken, "type", "veth", "peer", "name", `${taken}p`);
    assert.equal(made.code, 0);
    try {
      await assert.rejects(
        nets.create("a"),
        /Cannot create the network namespace of pod a: .*File exists/,
      );
      assert.equal((await ip("link", "show", taken)).code, 0, "another's link is not deleted");
      assert.equal((await ip("netns", "pids", "ixclash-a")).code, 1, "the namespace went");
      assert.deepEqual(
        [...Deno.readDirSync(`${dir}/10.219.11.0_24`)],
        [],
        "the block is free again",
      );
    } finally {
      await ip("link", "delete", taken);
      await nets.close();
      await ip("route", "del", "unreachable", cidr);
    }
  },
);
