/**
 * Gateways that share one port (`GATEWAY_WORKERS`): each member is a whole
 * gateway of its own — listener, function agents, leases — and the kernel
 * spreads connections over them (SO_REUSEPORT). So that `/metrics` counts the
 * group and not whichever member a scrape reached, every member serves its
 * own series as JSON on a private loopback port (to requests that carry the
 * group's secret), and the member that answers `/metrics` adds them up
 * (prom-client's aggregation: sums, and the lowest value for health gauges).
 *
 * A sum of counters must never go down, or Prometheus takes it for a reset
 * and counts everything again. So a member's counters are its **base** (what
 * it counted in its earlier lives: a restart sets its own counters back to 0)
 * plus what it counted in this life, and every member answers with both, the
 * id of its process's life, and a number that grows with each answer. Bases
 * only grow, merged series by series as the larger of what each member knows:
 * a member that sees another's life change makes everything it had shown of
 * it that one's base; a member that restarts asks the others what they last
 * saw of it; and at every scrape the member answering it sends each other
 * member its own answer and what it knows of that member's base, and hears
 * back theirs and what they know of its own. So whichever member a scrape
 * reaches, each member's part is its latest answer, base included (or, when
 * it does not answer within a second, its last), and what one scrape showed
 * of a member, the member itself knows. A base's series of a function
 * deleted since goes, as a member's own do.
 *
 * @module
 */
import { AggregatorRegistry, type Registry } from "prom-client";
import { logger } from "../common/log.ts";
import { listening } from "../common/net.ts";
import { AdminKey } from "../common/credential.ts";
import { UNKNOWN_FUNCTION } from "./metrics.ts";

/** This process's place in its group. */
export interface GatewayGroup {
  /** Its index in `ports`. */
  index: number;
  /** Every member's private metrics port, on 127.0.0.1. */
  ports: number[];
  /**
   * The group's secret (`INFERX_GATEWAY_GROUP_TOKEN`): the private ports
   * answer only requests that carry it, so that a local user without
   * credentials does not read the metrics `/metrics` keeps to administrators.
   */
  token: string;
}

/** The field a member's request to another's private port carries the group's secret in. */
const TOKEN_FIELD = "x-inferx-group-token";

const log = logger("gateway", "group");

/** A registry's series as prom-client gives them in JSON. */
export type MetricsJson = Awaited<ReturnType<Registry["getMetricsAsJSON"]>>;

/** What a member answers on its private port, and sends with its requests for the others'. */
export interface MemberAnswer {
  /** The id of this life of its process: a new one after a restart. */
  life: string;
  /** Its answers in this life, numbered from 1: a later one has every count of an earlier one. */
  seq: number;
  /** Its series as counted in this life. */
  metrics: MetricsJson;
  /** What it counted in its earlier lives, as far as it knows (cumulative series only). */
  base: MetricsJson;
}

/** An answer sent or given back in an exchange: with what the sender knows of the other's base. */
export interface Exchanged extends MemberAnswer {
  yourBase: MetricsJson;
}

/** What a member sends with its request for another's series: also its private port. */
interface Told extends Exchanged {
  port: number;
}

/** Series whose values only grow while their process lives. */
const CUMULATIVE = new Set(["counter", "histogram"]);

type Metric = MetricsJson[number];
type Value = Metric["values"][number];

/** Cumulative series, one entry each (a histogram's buckets, sum and count apart). */
type Flat = Map<string, { metric: Metric; value: Value }>;

const keyOf = (m: Metric, v: Value) =>
  `${m.name}\0${(v as { metricName?: string }).metricName ?? m.name}\0${JSON.stringify(v.labels)}`;

/** The cumulative series of `metrics`, by key. */
function flatten(metrics: MetricsJson): Flat {
  const out: Flat = new Map();
  for (const m of metrics) {
    if (!CUMULATIVE.has(String(m.type))) continue;
    for (const v of m.values) out.set(keyOf(m, v), { metric: m, value: v });
  }
  return out;
}

/** Drops the carried series of functions that no longer exist (`exists` says which do). */
function forgetGone(carried: Flat, exists?: (func: string) => boolean): void {
  if (!exists) return;
  for (const [key, c] of carried) {
    const func = (c.value.labels as Record<string, unknown> | undefined)?.function;
    if (typeof func === "string" && func !== UNKNOWN_FUNCTION && !exists(func)) carried.delete(key);
  }
}

/** `metrics` with `carried` added to its cumulative series, those it lacks included. */
function withCarried(metrics: MetricsJson, carried: Flat): MetricsJson {
  if (carried.size === 0) return metrics;
  const seen = new Set<string>();
  const out = metrics.map((m) => {
    if (!CUMULATIVE.has(String(m.type))) return m;
    return {
      ...m,
      values: m.values.map((v) => {
        const key = keyOf(m, v);
        seen.add(key);
        const c = carried.get(key);
        return c ? { ...v, value: v.value + c.value.value } : v;
      }),
    };
  }) as Metric[];
  for (const [key, c] of carried) {
    if (seen.has(key)) continue;
    let m = out.find((x) => x.name === c.metric.name);
    if (!m) out.push(m = { ...c.metric, values: [] } as Metric);
    m.values = [...m.values, c.value] as Metric["values"];
  }
  return out as MetricsJson;
}

/** The larger of `into`'s and `from`'s value, series by series, into `into`. */
function maxInto(into: Flat, from: Flat): void {
  for (const [key, e] of from) {
    const had = into.get(key);
    if (!had || had.value.value < e.value.value) into.set(key, e);
  }
}

/** `flat` as series in JSON, by metric. */
function unflatten(flat: Flat): MetricsJson {
  const out = new Map<string, Metric>();
  for (const { metric, value } of flat.values()) {
    let m = out.get(metric.name);
    if (!m) out.set(metric.name, m = { ...metric, values: [] } as Metric);
    (m.values as Value[]).push(value);
  }
  return [...out.values()] as MetricsJson;
}

/** Lives of a member remembered as over: an answer of one that comes late is not taken. */
const ENDED_LIVES = 16;

/** One other member's series as last seen: this life's, and its base. */
class MemberSeries {
  life?: string;
  #seq = 0;
  readonly #ended: string[] = [];
  /** Its series as counted in its current life, as it last answered. */
  #local?: MetricsJson;
  /** What it counted in its earlier lives, as far as this member knows. */
  readonly base: Flat = new Map();

  /** What counts for it: its last answer with its base. */
  get last(): MetricsJson | undefined {
    return this.#local && withCarried(this.#local, this.base);
  }

  /**
   * Takes an answer; returns what counts for the member now. An answer of
   * the same life older than the last one taken (the two crossed), or of a
   * life over since, is not taken.
   */
  take(answer: MemberAnswer, exists?: (func: string) => boolean): MetricsJson {
    const stale = this.#ended.includes(answer.life) ||
      (answer.life === this.life && answer.seq <= this.#seq);
    if (stale && this.#local) return this.last!;
    if (this.life !== undefined && answer.life !== this.life) {
      // A new life: everything it had shown is its base now.
      if (this.#local) maxInto(this.base, flatten(this.last!));
      this.#ended.push(this.life);
      if (this.#ended.length > ENDED_LIVES) this.#ended.shift();
    }
    maxInto(this.base, flatten(answer.base));
    forgetGone(this.base, exists);
    this.life = answer.life;
    this.#seq = answer.seq;
    this.#local = answer.metrics;
    return this.last!;
  }
}

/** Whether `m` is series in JSON as prom-client gives them: named metrics of numbered values. */
function isMetrics(m: unknown): m is MetricsJson {
  return Array.isArray(m) &&
    m.every((x) =>
      x !== null && typeof x === "object" && typeof x.name === "string" &&
      typeof x.type === "string" && Array.isArray(x.values) &&
      x.values.every((v: unknown) =>
        v !== null && typeof v === "object" && Number.isFinite((v as Value).value) &&
        ((v as Value).labels === undefined || typeof (v as Value).labels === "object")
      )
    );
}

/** `value` as another member's answer, or undefined when it is not one. */
function asAnswer(value: unknown): Exchanged | undefined {
  const t = value as Partial<Exchanged> | null;
  return t && typeof t === "object" && typeof t.life === "string" && Number.isInteger(t.seq) &&
      isMetrics(t.metrics) && isMetrics(t.base) && isMetrics(t.yourBase)
    ? t as Exchanged
    : undefined;
}

/** The group's metrics as one member sees them, scrape after scrape. */
export class GroupMetrics {
  readonly #group: GatewayGroup;
  readonly #local: Registry;
  readonly #life = crypto.randomUUID();
  #seq = 0;
  readonly #members = new Map<number, MemberSeries>();
  /** What this member counted in its earlier lives: its base. */
  readonly #self: Flat = new Map();
  readonly #fetch: (port: number, path: string, body?: unknown) => Promise<unknown>;
  readonly #exists?: (func: string) => boolean;

  /**
   * `fetchMember`: asks the member on `port` for `path`, sending `body` as
   * JSON (POST) when there is one. `exists`: whether a function exists (the
   * series carried of one deleted go).
   */
  constructor(
    group: GatewayGroup,
    local: Registry,
    fetchMember?: (port: number, path: string, body?: unknown) => Promise<unknown>,
    exists?: (func: string) => boolean,
  ) {
    this.#group = group;
    this.#local = local;
    this.#exists = exists;
    this.#fetch = fetchMember ?? (async (port, path, body) => {
      const res = await fetch(`http://127.0.0.1:${port}${path}`, {
        method: body === undefined ? "GET" : "POST",
        headers: { [TOKEN_FIELD]: group.token, "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(1000),
      });
      if (!res.ok) throw new Error(`status ${res.status}`);
      return await res.json();
    });
  }

  get #port(): number {
    return this.#group.ports[this.#group.index];
  }

  /** This member's own answer: its series as counted in this life, its base, its life's id. */
  async answer(): Promise<MemberAnswer> {
    const metrics = await this.#local.getMetricsAsJSON();
    return { life: this.#life, seq: ++this.#seq, metrics, base: unflatten(this.#self) };
  }

  /** What this member last saw of the member on `port` (corrected), for that member's restart. */
  seen(port: number): MetricsJson {
    return this.#members.get(port)?.last ?? [];
  }

  /**
   * Takes what another member sent with its request for this one's series
   * (its own answer, as it is about to show it to a scrape, and what it knows
   * of this one's base), and answers that request: this one's answer and
   * what it knows of the sender's base. Undefined when `body` is not a
   * member's.
   */
  async told(body: unknown): Promise<Exchanged | undefined> {
    const t = asAnswer(body) as Told | undefined;
    if (!t || !Number.isInteger(t.port) || t.port === this.#port) return undefined;
    if (!this.#group.ports.includes(t.port)) return undefined;
    const member = this.#member(t.port);
    member.take(t, this.#exists);
    maxInto(this.#self, flatten(t.yourBase));
    return { ...await this.answer(), yourBase: unflatten(member.base) };
  }

  #member(port: number): MemberSeries {
    let member = this.#members.get(port);
    if (!member) this.#members.set(port, member = new MemberSeries());
    return member;
  }

  /**
   * At start: what the others last saw of this member (the most any of them
   * saw, series by series) is carried into its answers to scrapes, so that
   * the group's sums do not go down whichever member a scrape reaches.
   */
  async recall(): Promise<void> {
    const others = this.#group.ports.filter((_, i) => i !== this.#group.index);
    const seen = await Promise.allSettled(
      others.map((port) => this.#fetch(port, `/seen.json?port=${this.#port}`)),
    );
    for (const s of seen) {
      if (s.status === "fulfilled" && isMetrics(s.value)) maxInto(this.#self, flatten(s.value));
    }
  }

  /**
   * Serves this member's answer at `/metrics.json` and what it saw of
   * another at `/seen.json?port=`, on 127.0.0.1 (`port`: its private one).
   */
  serve(port = this.#port): { close(): Promise<void> } {
    // Named when taken: the group's private port, not GATEWAY_PORT.
    const what = `the private metrics port of gateway member ${this.#group.index}`;
    // Compared by hash, in constant time, as the administrator's key is.
    const token = new AdminKey(this.#group.token);
    const server = listening(what, "127.0.0.1", port, () =>
      Deno.serve(
        { hostname: "127.0.0.1", port, onListen() {} },
        async (req) => {
          if (!token.matches(req.headers.get(TOKEN_FIELD) ?? "")) {
            return new Response(null, { status: 401 });
          }
          const url = new URL(req.url);
          if (url.pathname === "/metrics.json" && req.method === "POST") {
            const answer = await this.told(await req.json().catch(() => undefined));
            if (!answer) return Response.json({ error: "not a member's answer" }, { status: 400 });
            return Response.json(answer);
          }
          if (url.pathname === "/seen.json") {
            return Response.json(this.seen(Number(url.searchParams.get("port"))));
          }
          return new Response(null, { status: 404 });
        },
      ));
    return { close: () => server.shutdown() };
  }

  /**
   * This member's series (with what it counted in earlier lives) and every
   * other member's: as they answer within a second, else as they last
   * answered (none before its first answer).
   */
  async registry(): Promise<Registry> {
    forgetGone(this.#self, this.#exists);
    // This member's answer goes to the others with the requests for theirs, and with what it
    // knows of their bases; their answers bring what they know of its own.
    const mine = await this.answer();
    const others = this.#group.ports.filter((_, i) => i !== this.#group.index);
    const answers = await Promise.allSettled(
      others.map((port) =>
        this.#fetch(
          port,
          "/metrics.json",
          {
            ...mine,
            port: this.#port,
            yourBase: unflatten(this.#member(port).base),
          } satisfies Told,
        )
      ),
    );
    const all: MetricsJson[] = [];
    for (const [i, a] of answers.entries()) {
      const port = others[i];
      const member = this.#member(port);
      const answer = a.status === "fulfilled" ? asAnswer(a.value) : undefined;
      if (answer) {
        all.push(member.take(answer, this.#exists));
        maxInto(this.#self, flatten(answer.yourBase));
        continue;
      }
      log.warn("Gateway member on port {port} did not give its metrics: {error}", {
        port,
        error: a.status === "rejected" ? String(a.reason) : "not a member's answer",
      });
      if (member.last) all.push(member.last);
    }
    // Its own part with its base as the others' answers left it.
    all.unshift(withCarried(mine.metrics, this.#self));
    return AggregatorRegistry.aggregate(all);
  }
}
