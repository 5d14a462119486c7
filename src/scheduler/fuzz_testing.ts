/**
 * A seeded property test of the scheduler core: random sequences of the
 * events it takes (functions made, changed and deleted; nodes joining,
 * resized, falling silent and coming back; gateways asking, returning and
 * dying; pods starting, failing and parking; quotas; time; the scheduler
 * restarted from its records) are played against it, with a model of the
 * node agents and gateways carrying out what it asks. After every step the
 * invariants are checked: its accounting equals a recount from its pods, no
 * node's CPU, memory or GPU memory is given twice (in its view, and in the
 * model's: what live workers really hold), leases only on Ready pods,
 * replicas within `max_replica`, every request answered once, nothing
 * leaked when everything settles; and a seed gives the same actions every
 * time. `fuzz_test.ts` runs it. (Beside the core, not in it: it draws from the
 * platform's seeded generator.)
 *
 * @module
 */
import { newCoreState, step } from "./core/mod.ts";
import { funcReport, nodeReport } from "./core/testing.ts";
import { rng } from "../common/random.ts";
import type {
  CoreAction,
  CoreEvent,
  CorePolicy,
  CoreState,
  FuncReport,
  NodeReport,
  PodPlacement,
  PodRecord,
} from "./core/types.ts";
import type { StandbyTier } from "../model/cluster.ts";

/** Seeded draws over the project's PRNG. */
function draws(seed: number) {
  const next = rng(seed);
  return {
    next,
    int: (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1)),
    pick: <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)],
    chance: (p: number) => next() < p,
  };
}
type R = ReturnType<typeof draws>;

export interface Options {
  steps: number;
  /** allow policy changes lowering maxReplica */
  lowerMax: boolean;
  /** allow scheduler restarts (rebuild from records) */
  restarts: boolean;
  /** allow node flaps (ready false / stale heartbeat) */
  flaps: boolean;
  /** allow quotas */
  quotas: boolean;
  fairShare: boolean;
  /** world-level checks (real GPU vram across alive world pods) */
  worldChecks: boolean;
  /** allow node resize */
  resize: boolean;
}
export const DEFAULT_OPTS: Options = {
  steps: 300,
  lowerMax: true,
  restarts: true,
  flaps: true,
  quotas: true,
  fairShare: true,
  worldChecks: true,
  resize: false,
};

/** A pod as the modelled node agents run it. */
interface WorldPod extends PodPlacement {
  desired: "Running" | "Standby" | "Terminated";
  state: "Creating" | "Ready" | "Standby" | "Resuming" | "Failed" | "Terminated";
  tier?: StandbyTier;
  endpoint?: string;
  /** the core asked; the agent not yet done */
  pending: boolean;
}

interface Gw {
  id: string;
  alive: boolean;
  held: Set<string>;
  reclaimAsked: Set<string>;
  lastBeat: number;
}

interface Req {
  reqId: string;
  func: string;
  gateway: string;
  deadline: number;
  answered: number; // count
  cancelled: boolean;
  issuedAt: number;
}

export interface Violation {
  seed: number;
  step: number;
  invariant: string;
  detail: string;
}

const TENANTS = ["t1", "t2", "t3"];
const FUNCS = ["t1/n/a", "t1/n/b", "t2/n/c", "t2/n/d", "t3/n/e"];
const NODES = ["n1", "n2", "n3", "n4"];
const TIERS: StandbyTier[] = ["paused", "host_memory", "file"];

export class Fuzz {
  r: R;
  core: CoreState;
  now = 0;
  stepNo = 0;
  log: string[] = [];
  actionsLog: string[] = [];
  violations: Violation[] = [];
  world = new Map<string, WorldPod>();
  nodeSpec = new Map<string, NodeReport>();
  nodeUp = new Map<string, { ready: boolean; beat: number }>();
  funcSpec = new Map<string, FuncReport>();
  maxLowered = new Set<string>();
  quotaLowered = new Set<string>();
  quotas = new Map<string, { maxGpu?: number; maxReplica?: number }>();
  gws: Gw[] = [];
  gwSeq = 0;
  reqs = new Map<string, Req>();
  reqSeq = 0;
  checks = new Map<string, number>();
  /** nodes that were resized since start */
  resized = new Set<string>();
  /** events in order, for replay */
  events: { ev: CoreEvent; now: number; restart?: string }[] = [];

  constructor(public seed: number, public o: Options = DEFAULT_OPTS) {
    this.r = draws(seed);
    this.core = newCoreState({ podIdPrefix: "p", fairShare: o.fairShare });
    for (let i = 0; i < 3; i++) this.newGateway();
  }

  newGateway() {
    const g: Gw = {
      id: `g${++this.gwSeq}`,
      alive: true,
      held: new Set(),
      reclaimAsked: new Set(),
      lastBeat: this.now,
    };
    this.gws.push(g);
    return g;
  }

  violate(inv: string, detail: string) {
    this.violations.push({ seed: this.seed, step: this.stepNo, invariant: inv, detail });
  }
  ok(inv: string) {
    this.checks.set(inv, (this.checks.get(inv) ?? 0) + 1);
  }

  // ---------------- applying events ----------------
  apply(ev: CoreEvent) {
    this.events.push({ ev: structuredClone(ev), now: this.now });
    this.log.push(`t=${this.now} ${JSON.stringify(ev)}`);
    const { actions } = step(this.core, ev, this.now);
    for (const a of actions) this.actionsLog.push(`${this.stepNo}:${JSON.stringify(a)}`);
    this.onActions(actions);
    this.checkAll(ev, actions);
  }

  onActions(actions: CoreAction[]) {
    for (const a of actions) {
      switch (a.type) {
        case "createPod": {
          if (this.world.has(a.pod.id)) this.violate("unique-pod-id", a.pod.id);
          this.world.set(a.pod.id, {
            ...structuredClone(a.pod),
            desired: "Running",
            state: "Creating",
            pending: true,
          });
          break;
        }
        case "terminatePod": {
          const w = this.world.get(a.podId);
          if (!w) break;
          if (a.orphan) {
            this.world.delete(a.podId);
            break;
          }
          w.desired = "Terminated";
          w.pending = true;
          break;
        }
        case "parkPod":
        case "resumePod": {
          const w = this.world.get(a.podId);
          const park = a.type === "parkPod";
          if (!w) {
            this.violate(
              park ? "park-known-pod" : "resume-known-pod",
              `${a.type} for unknown world pod ${a.podId}`,
            );
            break;
          }
          // A resume the store refuses (its write never made): the agent never hears of it, the
          // core is told (the service reads the record back first: a write with its answer lost
          // is no refusal).
          if (!park && this.r.chance(0.1)) {
            this.refused.push(a.podId);
            break;
          }
          w.desired = park ? "Standby" : "Running";
          if (park) w.tier = a.tier;
          w.pending = true;
          break;
        }
        case "leaseGranted": {
          const req = this.reqs.get(a.reqId);
          if (!req) this.violate("grant-known-req", `grant for unknown req ${a.reqId}`);
          else {
            req.answered++;
            if (req.answered > 1) this.violate("answer-once", `req ${a.reqId} answered twice`);
            if (req.gateway !== a.gateway) {
              this.violate(
                "grant-right-gateway",
                `req ${a.reqId} of ${req.gateway} granted to ${a.gateway}`,
              );
            }
            if (req.cancelled) {
              // a grant to a cancelled request: the gateway would return it
            }
          }
          const pod = this.core.pods.get(a.podId);
          if (!pod) this.violate("grant-live-pod", `granted ${a.podId} not in core`);
          else {
            if (pod.state !== "Ready") {
              this.violate("grant-ready-pod", `granted ${a.podId} in state ${pod.state}`);
            } else this.ok("grant-ready-pod");
            if (!a.endpoint) this.violate("grant-endpoint", `granted ${a.podId} without endpoint`);
          }
          const wp = this.world.get(a.podId);
          if (!wp || wp.state !== "Ready" || wp.desired === "Terminated") {
            this.violate(
              "grant-world-ready",
              `granted ${a.podId} but world says ${wp ? `${wp.state}/${wp.desired}` : "absent"}`,
            );
          } else this.ok("grant-world-ready");
          const g = this.gws.find((g) => g.id === a.gateway);
          if (g && g.alive) {
            if (req?.cancelled) {
              // gateway gives it back at once (modelled later as return)
              g.held.add(a.podId);
            } else g.held.add(a.podId);
          }
          break;
        }
        case "leaseFailed": {
          const req = this.reqs.get(a.reqId);
          if (!req) this.violate("fail-known-req", `fail for unknown req ${a.reqId}`);
          else {
            req.answered++;
            if (req.answered > 1) {
              this.violate("answer-once", `req ${a.reqId} answered twice (${a.code})`);
            }
          }
          break;
        }
        case "reclaimLease": {
          const g = this.gws.find((g) => g.id === a.gateway);
          if (g) g.reclaimAsked.add(a.podId);
          break;
        }
        default:
          break;
      }
    }
  }

  // ---------------- invariants ----------------
  checkAll(ev: CoreEvent, actions: CoreAction[]) {
    const s = this.core;
    // A. accounting equals recompute
    for (const node of s.nodeList) {
      let cpu = 0, mem = 0;
      const vram = new Map<number, number>();
      const ctx = new Map<number, number>();
      for (const id of node.pods) {
        const p = s.pods.get(id);
        if (!p) {
          this.violate("node-pods-exist", `${node.name} lists ${id} not in pods`);
          continue;
        }
        if (p.node !== node.name) {
          this.violate("node-pods-exist", `${id} on ${p.node} listed by ${node.name}`);
        }
        if (p.held.cpu) cpu += p.cpu;
        if (p.held.mem) mem += p.memMB + (p.held.gpuInMem ? p.gpus.length * p.vramChargeMB : 0);
        if (p.held.vram) {
          for (const g of p.gpus) {
            vram.set(g.index, (vram.get(g.index) ?? 0) + p.vramChargeMB);
            ctx.set(g.index, (ctx.get(g.index) ?? 0) + 1);
          }
        }
      }
      if (cpu !== node.cpuUsed || mem !== node.memUsedMB) {
        this.violate(
          "accounting",
          `${node.name} cpuUsed ${node.cpuUsed} vs ${cpu}, mem ${node.memUsedMB} vs ${mem}`,
        );
      } else this.ok("accounting");
      for (const g of node.gpus) {
        if ((vram.get(g.index) ?? 0) !== g.vramUsedMB || (ctx.get(g.index) ?? 0) !== g.contexts) {
          this.violate(
            "accounting-gpu",
            `${node.name}/gpu${g.index} used ${g.vramUsedMB} vs ${
              vram.get(g.index) ?? 0
            }, contexts ${g.contexts} vs ${ctx.get(g.index) ?? 0}`,
          );
        } else this.ok("accounting-gpu");
      }
      // B. no overcommit in core view (skip resized nodes)
      if (!this.resized.has(node.name)) {
        if (node.cpuUsed > node.cpuTotal || node.memUsedMB > node.memTotalMB) {
          this.violate(
            "no-overcommit-cpu-mem",
            `${node.name} cpu ${node.cpuUsed}/${node.cpuTotal} mem ${node.memUsedMB}/${node.memTotalMB} after ${ev.type}`,
          );
        } else this.ok("no-overcommit-cpu-mem");
        for (const g of node.gpus) {
          if (g.vramUsedMB > g.vramTotalMB) {
            this.violate(
              "no-overcommit-vram",
              `${node.name}/gpu${g.index} ${g.vramUsedMB}/${g.vramTotalMB} after ${ev.type}`,
            );
          } else this.ok("no-overcommit-vram");
        }
      }
    }
    // C. structure
    for (const [id, p] of s.pods) {
      if (!s.nodes.get(p.node)?.pods.has(id)) {
        this.violate("pod-on-node", `${id} not in node ${p.node}`);
      }
      // D. leased pods Ready, not terminating
      if (p.leasedBy !== undefined) {
        if (p.state !== "Ready") {
          this.violate("lease-on-ready", `${id} leased by ${p.leasedBy} in state ${p.state}`);
        } else this.ok("lease-on-ready");
      }
      if (p.sharedWith && !p.leasedBy) {
        this.violate("lease-structure", `${id} sharedWith without leasedBy`);
      }
      if (p.sharedWith?.length && ev.type !== "podRecord" && ev.type !== "funcUpdate") {
        const f = unitOfPod(s, p);
        const shareNew = actions.some((a) => a.type === "leaseGranted" && a.podId === id);
        if (f && shareNew) {
          const live = liveCurrent(s, f);
          if (live < f.policy.maxReplica) {
            this.violate(
              "share-only-at-max",
              `${id} shared by ${p.leasedBy},${p.sharedWith} with live ${live} < max ${f.policy.maxReplica} after ${ev.type}`,
            );
          } else this.ok("share-only-at-max");
        }
      }
    }
    for (const f of s.funcs.values()) {
      for (const id of f.pods) {
        if (!s.pods.has(id)) this.violate("func-pods-exist", `${f.id} lists ${id}`);
      }
      for (const id of f.idle) {
        const p = s.pods.get(id);
        if (!p) this.violate("idle-exists", `${f.id} idle ${id} missing`);
        else if (p.state !== "Ready" || p.leasedBy || p.reclaiming || p.version !== f.version) {
          this.violate(
            "idle-is-free-ready",
            `${f.id} idle ${id} state=${p.state} leasedBy=${p.leasedBy} reclaiming=${p.reclaiming} v=${p.version}/${f.version}`,
          );
        } else this.ok("idle-is-free-ready");
      }
      // E. max replica (skip if ever lowered)
      if (!this.maxLowered.has(f.func)) {
        const live = liveCurrent(s, f);
        if (live > f.policy.maxReplica) {
          this.violate(
            "max-replica",
            `${f.id} v${f.version} live ${live} > max ${f.policy.maxReplica} after ${ev.type}`,
          );
        } else this.ok("max-replica");
      }
      // waiters belong to living gateways? checked after tick
    }
    // J. quotas (not lowered)
    for (const [t, q] of s.quotas) {
      if (this.quotaLowered.has(t)) continue;
      let rep = 0, gpus = 0;
      for (const p of s.pods.values()) {
        if (p.state === "Terminating" || !p.func.startsWith(t + "/")) continue;
        if (p.state !== "Standby") rep++;
        if (p.held.vram && p.parkingSince === undefined) gpus += p.gpus.length;
      }
      if (q.maxReplica !== undefined && rep > q.maxReplica) {
        this.violate("quota-replica", `${t} ${rep} > ${q.maxReplica} after ${ev.type}`);
      } else this.ok("quota-replica");
      if (q.maxGpu !== undefined && gpus > q.maxGpu) {
        this.violate("quota-gpu", `${t} ${gpus} > ${q.maxGpu} after ${ev.type}`);
      } else this.ok("quota-gpu");
    }
    // H / I after tick
    if (ev.type === "tick") {
      for (const [gw, seen] of s.gateways) {
        if (this.now - seen >= s.config.gatewayTimeoutMs) {
          this.violate("dead-gateway-forgotten", gw);
        }
      }
      for (const p of s.pods.values()) {
        for (const g of [p.leasedBy, ...(p.sharedWith ?? [])]) {
          if (!g) continue;
          if (!s.gateways.has(g)) {
            this.violate("dead-gateway-leases", `${p.id} held by forgotten gateway ${g}`);
          } else this.ok("dead-gateway-leases");
        }
      }
      for (const f of s.funcs.values()) {
        for (const w of f.waiters) {
          if (w.deadline <= this.now) this.violate("waiter-expired", `${w.reqId} past deadline`);
          if (!s.gateways.has(w.gateway)) {
            this.violate("waiter-dead-gw", `${w.reqId} of ${w.gateway}`);
          } else this.ok("waiter-dead-gw");
        }
      }
    }
    // waiters are requests not yet answered
    for (const f of s.funcs.values()) {
      for (const w of f.waiters) {
        const req = this.reqs.get(w.reqId);
        if (req && req.answered > 0) {
          this.violate("waiter-unanswered", `${w.reqId} waits in ${f.id} but was answered`);
        } else this.ok("waiter-unanswered");
      }
    }
    // K. world checks: real GPU / cpu on alive world pods
    if (this.o.worldChecks) {
      const perGpu = new Map<string, number>();
      for (const w of this.world.values()) {
        const holds = worldHolds(w);
        if (!holds.vram) continue;
        const node = this.nodeSpec.get(w.node);
        const over = node?.contextOverheadMB ?? 0;
        for (const g of w.gpus) {
          const k = `${w.node}/${g.index}`;
          perGpu.set(k, (perGpu.get(k) ?? 0) + g.vramMB + over);
        }
      }
      const perNode = new Map<string, { cpu: number; mem: number }>();
      for (const w of this.world.values()) {
        const h = worldHolds(w);
        const e = perNode.get(w.node) ?? { cpu: 0, mem: 0 };
        if (h.cpu) e.cpu += w.cpu;
        if (h.mem) e.mem += w.memMB;
        // A GPU pod parked in host memory holds its GPU memory there too.
        if (h.mem && w.state === "Standby" && w.tier === "host_memory") {
          const over = this.nodeSpec.get(w.node)?.contextOverheadMB ?? 0;
          for (const g of w.gpus) e.mem += g.vramMB + over;
        }
        perNode.set(w.node, e);
      }
      for (const [n, e] of perNode) {
        const spec = this.nodeSpec.get(n);
        if (spec && !this.resized.has(n) && (e.cpu > spec.cpuMillis || e.mem > spec.memMB)) {
          this.violate(
            "world-cpu-mem",
            `${n} alive pods hold cpu ${e.cpu}/${spec.cpuMillis} mem ${e.mem}/${spec.memMB} after ${ev.type}`,
          );
        } else this.ok("world-cpu-mem");
      }
      for (const [k, used] of perGpu) {
        const [n, i] = k.split("/");
        const spec = this.nodeSpec.get(n)?.gpus.find((g) => g.index === Number(i));
        if (spec && used > spec.vramMB && !this.resized.has(n)) {
          this.violate(
            "world-vram",
            `${k} alive pods hold ${used} > ${spec.vramMB} after ${ev.type}`,
          );
        } else this.ok("world-vram");
      }
    }
  }

  // ---------------- random events ----------------
  nodeReportFor(name: string): NodeReport {
    const spec = this.nodeSpec.get(name)!;
    const up = this.nodeUp.get(name)!;
    return { ...structuredClone(spec), ready: up.ready, heartbeat: up.beat };
  }

  genNode(name: string): NodeReport {
    const r = this.r;
    const gpuCount = r.pick([0, 1, 2, 2, 4]);
    const type = r.pick(["A", "B"]);
    return nodeReport(name, {
      cpuMillis: r.pick([4000, 8000]),
      memMB: r.pick([8192, 16384]),
      gpus: Array.from(
        { length: gpuCount },
        (_, index) => ({ index, type, vramMB: r.pick([24000, 48000]) }),
      ),
      contextOverheadMB: r.pick([0, 500]),
      standbyTiers: TIERS.filter(() => r.chance(0.6)),
    });
  }

  genFunc(id: string, version: number): FuncReport {
    const r = this.r;
    const gpuCount = r.pick([0, 0, 1, 1, 2]);
    const demand = {
      cpu: r.pick([500, 1000, 2000]),
      memMB: r.pick([512, 1024, 4096]),
      gpuType: r.pick(["Any", "A", "B"]),
      gpuCount,
      vramMB: gpuCount ? r.pick([4000, 10000, 20000]) : 0,
    };
    const maxReplica = r.int(1, 4);
    const policy: CorePolicy = {
      minReplica: r.pick([0, 0, 0, 1, 2]),
      maxReplica,
      standbyPerNode: r.pick([0, 1, 2]),
      scaleinTimeoutS: r.pick([1, 5, 30]),
      standbyTier: r.pick(TIERS),
      priority: r.pick(["high", "normal", "batch"] as const),
    };
    policy.minReplica = Math.min(policy.minReplica, maxReplica);
    return funcReport(id, demand, policy, version);
  }

  /** Resumes the store refused, told to the core at the next event. */
  readonly refused: string[] = [];

  randomEvent() {
    const refused = this.refused.shift();
    if (refused) return this.apply({ type: "resumeRefused", podId: refused, error: "refused" });
    const r = this.r;
    const x = r.next();
    const p = (w: number) => x < (acc += w);
    let acc = 0;
    if (p(0.05)) return this.evNodeJoin();
    if (p(this.o.flaps ? 0.04 : 0)) return this.evNodeFlap();
    if (p(0.01)) return this.evNodeRemove();
    if (p(0.05)) return this.evFuncUpdate();
    if (p(0.01)) return this.evFuncRemove();
    if (p(0.18)) return this.evLease();
    if (p(0.02)) return this.evCancel();
    if (p(0.12)) return this.evReturn();
    if (p(0.08)) return this.evHeartbeat();
    if (p(0.01)) return this.evGatewayDies();
    if (p(0.2)) return this.evAgent();
    if (p(0.02)) return this.evPodRecord();
    if (p(0.01)) return this.evKill();
    if (p(this.o.quotas ? 0.01 : 0)) return this.evQuota();
    if (p(0.01)) return this.evWeight();
    if (p(0.01)) return this.evSnapshot();
    if (p(this.o.restarts ? 0.005 : 0)) return this.evRestart();
    return this.evTick();
  }

  evNodeJoin() {
    const name = this.r.pick(NODES);
    if (!this.nodeSpec.has(name)) {
      this.nodeSpec.set(name, this.genNode(name));
    } else if (this.o.resize && this.r.chance(0.2)) {
      this.nodeSpec.set(name, this.genNode(name));
      this.resized.add(name);
    }
    this.nodeUp.set(name, { ready: true, beat: this.now });
    this.apply({ type: "nodeUpdate", node: this.nodeReportFor(name) });
  }
  evNodeFlap() {
    const known = [...this.nodeSpec.keys()];
    if (!known.length) return this.evTick();
    const name = this.r.pick(known);
    if (this.r.chance(0.5)) {
      // reported not ready
      this.nodeUp.set(name, { ready: false, beat: this.now });
      this.apply({ type: "nodeUpdate", node: this.nodeReportFor(name) });
    } else {
      // silent: heartbeat stops; report its old beat later via tick
      const up = this.nodeUp.get(name)!;
      up.beat = this.now - 20_000;
      this.apply({ type: "nodeUpdate", node: this.nodeReportFor(name) });
    }
  }
  evNodeRemove() {
    const known = [...this.nodeSpec.keys()];
    if (!known.length) return this.evTick();
    const name = this.r.pick(known);
    this.nodeSpec.delete(name);
    this.nodeUp.delete(name);
    // the node and its agent are gone: its pods are gone in the world too
    for (const [id, w] of this.world) if (w.node === name) this.world.delete(id);
    this.apply({ type: "nodeRemove", name });
  }
  evFuncUpdate() {
    const id = this.r.pick(FUNCS);
    const old = this.funcSpec.get(id);
    let f: FuncReport;
    if (!old) f = this.genFunc(id, 1);
    else {
      const kind = this.r.pick(["policy", "version", "split", "same"]);
      if (kind === "same") f = structuredClone(old);
      else if (kind === "policy") {
        const g = this.genFunc(id, old.version);
        f = { ...structuredClone(old), policy: g.policy };
        if (!this.o.lowerMax) {
          f.policy.maxReplica = Math.max(f.policy.maxReplica, old.policy.maxReplica);
        }
        f.policy.minReplica = Math.min(f.policy.minReplica, f.policy.maxReplica);
      } else if (kind === "version") {
        const g = this.genFunc(id, old.version + 1);
        f = { ...g, policy: structuredClone(old.policy) };
      } else {
        const g = this.genFunc(id, old.version + 1);
        f = {
          ...g,
          policy: structuredClone(old.policy),
          older: [{ version: old.version, demand: old.demand }],
        };
      }
      if (f.policy.maxReplica < old.policy.maxReplica) this.maxLowered.add(id);
    }
    this.funcSpec.set(id, f);
    this.apply({ type: "funcUpdate", func: structuredClone(f) });
  }
  evFuncRemove() {
    const known = [...this.funcSpec.keys()];
    if (!known.length) return this.evTick();
    const id = this.r.pick(known);
    this.funcSpec.delete(id);
    this.maxLowered.delete(id); // fresh on re-create? keep conservative: mark
    this.maxLowered.add(id);
    this.apply({ type: "funcRemove", id });
  }
  aliveGws() {
    return this.gws.filter((g) => g.alive);
  }
  evLease() {
    const g = this.r.pick(this.aliveGws());
    const func = this.r.chance(0.95) ? this.r.pick(FUNCS) : "t9/n/nope";
    const reqId = `r${++this.reqSeq}`;
    const deadline = this.now + this.r.pick([2000, 10_000, 30_000]);
    const req: Req = {
      reqId,
      func,
      gateway: g.id,
      deadline,
      answered: 0,
      cancelled: false,
      issuedAt: this.now,
    };
    this.reqs.set(reqId, req);
    g.lastBeat = this.now;
    const spec = this.funcSpec.get(func);
    const version = spec && this.r.chance(0.3)
      ? this.r.pick([spec.version, ...(spec.older ?? []).map((o) => o.version)])
      : undefined;
    this.apply({
      type: "lease",
      reqId,
      func,
      gateway: g.id,
      deadline,
      ...(version !== undefined ? { version } : {}),
    });
  }
  evCancel() {
    const open = [...this.reqs.values()].filter((q) => q.answered === 0 && !q.cancelled);
    if (!open.length) return this.evTick();
    const q = this.r.pick(open);
    q.cancelled = true;
    this.apply({ type: "cancelLease", reqId: q.reqId, func: q.func });
  }
  evReturn() {
    const cands: [Gw, string][] = [];
    for (const g of this.aliveGws()) for (const id of g.held) cands.push([g, id]);
    if (!cands.length) return this.evTick();
    // prefer reclaimed ones
    const rec = cands.filter(([g, id]) => g.reclaimAsked.has(id));
    const [g, id] = rec.length && this.r.chance(0.5) ? this.r.pick(rec) : this.r.pick(cands);
    g.held.delete(id);
    g.reclaimAsked.delete(id);
    g.lastBeat = this.now;
    this.apply({ type: "return", podId: id, gateway: g.id, failed: this.r.chance(0.05) });
  }
  evHeartbeat() {
    const g = this.r.pick(this.aliveGws());
    g.lastBeat = this.now;
    const withLeases = this.r.chance(0.8);
    this.apply({
      type: "gatewayHeartbeat",
      gateway: g.id,
      ...(withLeases ? { leases: [...g.held] } : {}),
    });
  }
  evGatewayDies() {
    const alive = this.aliveGws();
    if (alive.length <= 1) return this.evTick();
    const g = this.r.pick(alive);
    g.alive = false;
    this.newGateway();
    this.log.push(`t=${this.now} # gateway ${g.id} dies`);
    this.evTick();
  }
  evAgent() {
    const pend = [...this.world.values()].filter((w) => w.pending || w.state === "Ready");
    if (!pend.length) return this.evTick();
    const w = this.r.pick(pend);
    const nodeAlive = this.nodeUp.get(w.node)?.ready;
    if (!w.pending) {
      // a Ready pod crashes rarely
      if (!this.r.chance(0.05)) return this.evTick();
      w.state = "Failed";
      this.apply({ type: "podStatus", podId: w.id, state: "Failed", error: "crash" });
      if (this.world.get(w.id)?.desired !== "Terminated") {
        // the agent cleans it; keep in world until terminated
      }
      return;
    }
    void nodeAlive;
    if (w.desired === "Terminated") {
      this.world.delete(w.id);
      this.apply({ type: "podStatus", podId: w.id, state: "Terminated" });
      return;
    }
    if (
      w.desired === "Running" &&
      (w.state === "Creating" || w.state === "Standby" || w.state === "Resuming" ||
        // Asked to park, then to run before it reported the park: parked, then resumed.
        (w.state === "Ready" && w.tier !== undefined))
    ) {
      if (w.state === "Creating" && this.r.chance(0.1)) {
        w.state = "Failed";
        w.pending = false;
        this.apply({ type: "podStatus", podId: w.id, state: "Failed", error: "boom" });
        return;
      }
      w.state = "Ready";
      w.endpoint = `127.0.0.1:${w.id}`;
      delete w.tier; // as an agent's Ready report clears it
      w.pending = false;
      this.apply({
        type: "podStatus",
        podId: w.id,
        state: "Ready",
        endpoint: w.endpoint,
        startedFrom: "fresh",
      });
      return;
    }
    if (w.desired === "Standby" && (w.state === "Ready" || w.state === "Creating")) {
      w.state = "Standby";
      w.pending = false;
      this.apply({ type: "podStatus", podId: w.id, state: "Standby" });
      return;
    }
    w.pending = false;
    this.evTick();
  }
  record(w: WorldPod): PodRecord {
    return {
      id: w.id,
      func: w.func,
      version: w.version,
      node: w.node,
      cpu: w.cpu,
      memMB: w.memMB,
      gpus: structuredClone(w.gpus),
      desired: w.desired,
      state: w.state,
      ...(w.tier ? { tier: w.tier } : {}),
      ...(w.endpoint ? { endpoint: w.endpoint } : {}),
    };
  }
  evPodRecord() {
    const all = [...this.world.values()];
    if (!all.length) return this.evTick();
    this.apply({ type: "podRecord", pod: this.record(this.r.pick(all)) });
  }
  evKill() {
    const ids = [...this.core.pods.keys()];
    if (!ids.length) return this.evTick();
    this.apply({ type: "killPod", podId: this.r.pick(ids) });
  }
  evQuota() {
    const t = this.r.pick(TENANTS);
    const q = {
      maxGpu: this.r.chance(0.5) ? this.r.int(0, 4) : undefined,
      maxReplica: this.r.chance(0.5) ? this.r.int(0, 5) : undefined,
    };
    const old = this.quotas.get(t);
    if (
      old &&
      ((q.maxGpu ?? Infinity) < (old.maxGpu ?? Infinity) ||
        (q.maxReplica ?? Infinity) < (old.maxReplica ?? Infinity))
    ) this.quotaLowered.add(t);
    if (!old && (q.maxGpu !== undefined || q.maxReplica !== undefined)) this.quotaLowered.add(t); // existing pods may exceed
    this.quotas.set(t, q);
    this.apply({ type: "tenantQuota", tenant: t, limits: q });
  }
  evWeight() {
    this.apply({
      type: "tenantWeight",
      tenant: this.r.pick(TENANTS),
      weight: this.r.pick([1, 2, 3, 0.5]),
    });
  }
  evSnapshot() {
    const ids = [...this.funcSpec.values()];
    const nodes = [...this.nodeSpec.keys()];
    if (!ids.length || !nodes.length) return this.evTick();
    const f = this.r.pick(ids);
    this.apply({
      type: "snapshot",
      func: f.id,
      version: f.version,
      node: this.r.pick(nodes),
      ready: this.r.chance(0.8),
    });
  }
  evTick() {
    this.now += this.r.pick([100, 500, 1000, 2000, 5000]);
    // alive gateways heartbeat on their own every 2s (modelled loosely): refresh some
    for (const g of this.aliveGws()) {
      if (this.now - g.lastBeat >= 2000 && this.r.chance(0.7)) {
        g.lastBeat = this.now;
        this.apply({ type: "gatewayHeartbeat", gateway: g.id, leases: [...g.held] });
      }
    }
    // ready nodes heartbeat
    for (const [name, up] of this.nodeUp) {
      if (
        up.ready && this.now - up.beat >= 5000 &&
        (!this.o.flaps || (this.r.chance(0.9) && up.beat > this.now - 15000))
      ) {
        up.beat = this.now;
        this.apply({ type: "nodeUpdate", node: this.nodeReportFor(name) });
      }
    }
    this.apply({ type: "tick" });
  }
  evRestart() {
    // New scheduler: rebuild from nodes, pod records, functions (the documented order).
    this.log.push(`t=${this.now} # scheduler restart`);
    const prefix = `p${this.stepNo}x`;
    this.core = newCoreState({ podIdPrefix: prefix, fairShare: this.o.fairShare });
    this.events.push({ ev: { type: "tick" }, now: this.now, restart: prefix });
    for (const name of this.nodeSpec.keys()) {
      this.apply({ type: "nodeUpdate", node: this.nodeReportFor(name) });
    }
    for (const [t, q] of this.quotas) this.apply({ type: "tenantQuota", tenant: t, limits: q });
    for (const w of [...this.world.values()]) {
      this.apply({ type: "podRecord", pod: this.record(w) });
    }
    for (const f of this.funcSpec.values()) {
      this.apply({ type: "funcUpdate", func: structuredClone(f) });
    }
    // requests waiting in the old scheduler are lost: the gateway's RPC would fail; mark answered
    for (const q of this.reqs.values()) if (q.answered === 0) q.answered = -1000; // exempt
  }

  run() {
    for (this.stepNo = 0; this.stepNo < this.o.steps; this.stepNo++) this.randomEvent();
  }

  /** Drain: time passes, everything settles; every request answered. */
  drain() {
    for (let i = 0; i < 40; i++) {
      // agents finish everything
      for (const w of [...this.world.values()]) {
        if (!w.pending) continue;
        if (!this.nodeUp.get(w.node)?.ready) continue;
        if (w.desired === "Terminated") {
          this.world.delete(w.id);
          this.apply({ type: "podStatus", podId: w.id, state: "Terminated" });
        } else if (w.desired === "Running") {
          w.state = "Ready";
          w.endpoint = `127.0.0.1:${w.id}`;
          delete w.tier; // as an agent's Ready report clears it
          w.pending = false;
          this.apply({ type: "podStatus", podId: w.id, state: "Ready", endpoint: w.endpoint });
        } else if (w.desired === "Standby") {
          w.state = "Standby";
          w.pending = false;
          this.apply({ type: "podStatus", podId: w.id, state: "Standby" });
        }
      }
      // gateways return everything
      for (const g of this.aliveGws()) {
        for (const id of [...g.held]) {
          g.held.delete(id);
          this.apply({ type: "return", podId: id, gateway: g.id });
        }
      }
      this.now += 1000;
      for (const g of this.aliveGws()) {
        this.apply({ type: "gatewayHeartbeat", gateway: g.id, leases: [...g.held] });
      }
      for (const [name, up] of this.nodeUp) {
        up.beat = this.now;
        this.apply({ type: "nodeUpdate", node: this.nodeReportFor(name) });
      }
      // the informer's resync redelivers every record
      for (const w of [...this.world.values()]) {
        this.apply({ type: "podRecord", pod: this.record(w) });
      }
      this.apply({ type: "tick" });
      this.stepNo++;
    }
    // Now: every request answered (grant or fail) unless cancelled
    for (const q of this.reqs.values()) {
      if (q.answered === 0 && !q.cancelled) {
        this.violate(
          "every-request-answered",
          `${q.reqId} (${q.func}, gw ${q.gateway}, deadline ${q.deadline}) never answered by t=${this.now}`,
        );
      } else this.ok("every-request-answered");
    }
    // World pods desired Running but core forgot them => leak
    for (const w of this.world.values()) {
      if (!this.core.pods.has(w.id) && w.desired !== "Terminated") {
        this.violate(
          "world-pod-leak",
          `world pod ${w.id} (${w.func} v${w.version} on ${w.node}, ${w.state}/${w.desired}) unknown to the core`,
        );
      } else this.ok("world-pod-leak");
    }
    // Core pods not in world (except on removed nodes)
    for (const p of this.core.pods.values()) {
      if (!this.world.has(p.id)) {
        this.violate("core-ghost-pod", `${p.id} ${p.state} on ${p.node} not in world`);
      } else this.ok("core-ghost-pod");
    }
    for (const f of this.core.funcs.values()) {
      const live = liveCurrent(this.core, f);
      if (live > f.policy.maxReplica) {
        this.violate(
          "drain-max-replica",
          `${f.id} live ${live} > max ${f.policy.maxReplica} after drain`,
        );
      } else this.ok("drain-max-replica");
      const act = activeCurrent(this.core, f);
      const leased = [...f.pods].filter((id) => this.core.pods.get(id)?.leasedBy).length;
      if (f.waiters.length === 0 && act > Math.max(f.policy.minReplica, leased)) {
        this.violate(
          "drain-scale-in",
          `${f.id} active ${act} > min ${f.policy.minReplica} (leased ${leased}) after 40 s idle; pods ${
            [...f.pods].map((id) => {
              const p = this.core.pods.get(id)!;
              return `${id}:${p.state}${p.leasedBy ? "/L" + p.leasedBy : ""}${
                p.reclaiming ? "/R" : ""
              }${p.unclaimedUntil ? "/U" : ""}`;
            }).join(",")
          }`,
        );
      } else this.ok("drain-scale-in");
    }
    for (const [t, q] of this.core.quotas) {
      let rep = 0;
      for (const p of this.core.pods.values()) {
        if (p.state === "Terminating" || !p.func.startsWith(t + "/")) continue;
        if (p.state !== "Standby") rep++;
      }
      if (
        q.maxReplica !== undefined &&
        rep > Math.max(
            q.maxReplica,
            [...this.core.funcs.values()].filter((f) => f.func.startsWith(t + "/")).reduce(
              (n, f) => n + f.policy.minReplica,
              0,
            ),
          )
      ) {
        this.violate("drain-quota", `${t} ${rep} replicas > quota ${q.maxReplica} after drain`);
      } else this.ok("drain-quota");
    }
    // min replica when capacity allows: check only if no starved functions and nodes all ready
    for (const f of this.core.funcs.values()) {
      if (f.policy.minReplica === 0 || f.schedulable?.status === "False") continue;
      const act = activeCurrent(this.core, f);
      if (act < f.policy.minReplica && !this.core.starved.has(f.id) && !f.startBackoff) {
        this.violate(
          "min-replica",
          `${f.id} active ${act} < min ${f.policy.minReplica}, not starved`,
        );
      } else this.ok("min-replica");
    }
  }
}

function worldHolds(w: WorldPod): { vram: boolean; cpu: boolean; mem: boolean } {
  if (w.state === "Failed" || w.state === "Terminated") {
    return { vram: false, cpu: false, mem: false };
  }
  if (w.state === "Standby") {
    return { vram: w.tier === "paused", cpu: false, mem: w.tier !== "file" };
  }
  return { vram: true, cpu: true, mem: true };
}
function unitOfPod(s: CoreState, p: { func: string; version: number }) {
  const f = s.funcs.get(p.func);
  if (!f || f.version === p.version) return f;
  return s.funcs.get(`${p.func}@${p.version}`);
}
function liveCurrent(s: CoreState, f: { pods: Set<string>; version: number }) {
  let n = 0;
  for (const id of f.pods) {
    const p = s.pods.get(id);
    if (p && p.version === f.version && p.state !== "Terminating") n++;
  }
  return n;
}
function activeCurrent(s: CoreState, f: { pods: Set<string>; version: number }) {
  let n = 0;
  for (const id of f.pods) {
    const p = s.pods.get(id);
    if (p && p.version === f.version && p.state !== "Terminating" && p.state !== "Standby") n++;
  }
  return n;
}

export function runSeed(seed: number, o: Options = DEFAULT_OPTS) {
  const fz = new Fuzz(seed, o);
  let crash: unknown;
  try {
    fz.run();
    fz.drain();
  } catch (e) {
    crash = e;
    fz.violate("no-crash", String((e as Error)?.stack ?? e).split("\n").slice(0, 4).join(" | "));
  }
  return { fz, crash };
}
