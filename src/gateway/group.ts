/**
 * Gateways that share one port (`GATEWAY_WORKERS`): each member is a whole
 * gateway of its own — listener, function agents, leases — and the kernel
 * spreads connections over them (SO_REUSEPORT). So that `/metrics` counts the
 * group and not whichever member a scrape reached, every member serves its
 * own series as JSON on a private loopback port (to requests that carry the
 * group's secret), with the id of its process's
 * life, and the member that answers `/metrics` adds them up (prom-client's
 * aggregation: sums, and the lowest value for health gauges). A sum of
 * counters must never go down, or Prometheus takes it for a reset and counts
 * everything again: a member that does not answer in time counts with its
 * last answer; one whose life changed (a restart: its counters back at 0)
 * with everything it had shown before carried, series it has not counted
 * again included; and a member that restarted asks the others what they last
 * saw of it, and carries that in its own answers to scrapes. So that the
 * others have seen everything a scrape was shown, a member answering one
 * sends its own series to each of them with its request for theirs. A
 * carried series of a function deleted since goes, as a member's own do.
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
  metrics: MetricsJson;
}

/** What a member sends with its request for another's series: its own, and its private port. */
interface Told extends MemberAnswer {
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

/** One other member's series as last seen, what it counted in earlier lives carried. */
class MemberSeries {
  life?: string;
  #seq = 0;
  /** Its last answer, corrected: what counts for it while it does not answer. */
  last?: MetricsJson;
  #carried: Flat = new Map();

  /**
   * Takes a new answer; returns it with what the member counted in its
   * earlier lives added (of functions that still exist). An answer of the
   * same life older than the last one taken (the two crossed) is not taken:
   * the last one is returned.
   */
  take(answer: MemberAnswer, exists?: (func: string) => boolean): MetricsJson {
    if (answer.life === this.life && answer.seq <= this.#seq && this.last) return this.last;
    if (this.life !== undefined && answer.life !== this.life && this.last) {
      this.#carried = flatten(this.last); // everything it had shown, earlier carries included
    }
    forgetGone(this.#carried, exists);
    this.life = answer.life;
    this.#seq = answer.seq;
    this.last = withCarried(answer.metrics, this.#carried);
    return this.last;
  }
}

/** `value` as a member's answer, or undefined when it is not one. */
function asTold(value: unknown): Told | undefined {
  const t = value as Partial<Told> | null;
  return t && typeof t === "object" && typeof t.life === "string" && Number.isInteger(t.seq) &&
      Number.isInteger(t.port) && Array.isArray(t.metrics)
    ? t as Told
    : undefined;
}

/** The group's metrics as one member sees them, scrape after scrape. */
export class GroupMetrics {
  readonly #group: GatewayGroup;
  readonly #local: Registry;
  readonly #life = crypto.randomUUID();
  #seq = 0;
  readonly #members = new Map<number, MemberSeries>();
  /** What this member counted in its earlier lives, as the others last saw it. */
  #self: Flat = new Map();
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

  /** This member's own answer: its series as counted in this life, and the life's id. */
  async answer(): Promise<MemberAnswer> {
    return { life: this.#life, seq: ++this.#seq, metrics: await this.#local.getMetricsAsJSON() };
  }

  /** What this member last saw of the member on `port` (corrected), for that member's restart. */
  seen(port: number): MetricsJson {
    return this.#members.get(port)?.last ?? [];
  }

  /**
   * Takes what another member sent with its request for this one's series
   * (its own, as it is about to show them to a scrape), and answers that
   * request. Undefined when `body` is not a member's answer.
   */
  told(body: unknown): Promise<MemberAnswer> | undefined {
    const t = asTold(body);
    if (!t || t.port === this.#port || !this.#group.ports.includes(t.port)) return undefined;
    this.#member(t.port).take(t, this.#exists);
    return this.answer();
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
      if (s.status !== "fulfilled") continue;
      for (const [key, e] of flatten(s.value as MetricsJson)) {
        const had = this.#self.get(key);
        if (!had || had.value.value < e.value.value) this.#self.set(key, e);
      }
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
            const answer = this.told(await req.json().catch(() => undefined));
            if (!answer) return Response.json({ error: "not a member's answer" }, { status: 400 });
            return Response.json(await answer);
          }
          if (url.pathname === "/metrics.json") return Response.json(await this.answer());
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
    // What this scrape is shown of this member goes to the others first, with the requests
    // for theirs: one that restarts later then learns it from them (`recall`).
    const mine: Told = { ...await this.answer(), port: this.#port };
    const all = [withCarried(mine.metrics, this.#self)];
    const others = this.#group.ports.filter((_, i) => i !== this.#group.index);
    const answers = await Promise.allSettled(
      others.map((port) => this.#fetch(port, "/metrics.json", mine)),
    );
    for (const [i, a] of answers.entries()) {
      const port = others[i];
      const member = this.#member(port);
      if (a.status === "fulfilled") all.push(member.take(a.value as MemberAnswer, this.#exists));
      else {
        log.warn("Gateway member on port {port} did not give its metrics: {error}", {
          port,
          error: String(a.reason),
        });
        if (member.last) all.push(member.last);
      }
    }
    return AggregatorRegistry.aggregate(all);
  }
}
