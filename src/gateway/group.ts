/**
 * Gateways that share one port (`GATEWAY_WORKERS`): each member is a whole
 * gateway of its own — listener, function agents, leases — and the kernel
 * spreads connections over them (SO_REUSEPORT). So that `/metrics` counts the
 * group and not whichever member a scrape reached, every member serves its
 * own series as JSON on a private loopback port (to requests that carry the
 * group's secret), and the member that answers `/metrics` adds them up
 * (prom-client's aggregation: sums, and the lowest value for health gauges),
 * in the members' order (sums of fractions in another order differ in their
 * last digit).
 *
 * A sum of counters must never go down, or Prometheus takes it for a reset
 * and counts everything again. A member's counters are its **base** (what it
 * counted in its earlier lives: a restart sets its own back to 0) plus what
 * it counted in this life. The group's first member, which the others live
 * and die with (a restart of the whole group is a reset Prometheus takes as
 * one), keeps for each other member the most it ever showed: a member reports
 * its series to the first before it shows them to anyone, a restarted member
 * takes what the first kept of it as its base, and a scrape counts a member
 * that does not answer within a second with what the first kept of it. So
 * whatever a scrape showed of a member, the first member knows, and no later
 * scrape shows less. Series of a function deleted since go from a base and
 * from what the first keeps, as a member's own do.
 *
 * @module
 */
import { AggregatorRegistry, type Registry } from "prom-client";
import { InferxError } from "../common/errors.ts";
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

/** What a member answers on its private port: its series with its base. */
export interface MemberAnswer {
  metrics: MetricsJson;
}

/** Series whose values only grow while their process lives. */
const CUMULATIVE = new Set(["counter", "histogram"]);

type Metric = MetricsJson[number];
type Value = Metric["values"][number];

/** Cumulative series, one entry each (a histogram's buckets, sum and count apart). */
type Flat = Map<string, { metric: Metric; value: Value }>;

const keyOf = (m: Metric, v: Value) =>
  `${m.name}\0${(v as { metricName?: string }).metricName ?? m.name}\0${JSON.stringify(v.labels)}`;

/** The cumulative series of `metrics`, by key (each with its metric's head, not its values). */
function flatten(metrics: MetricsJson): Flat {
  const out: Flat = new Map();
  for (const m of metrics) {
    if (!CUMULATIVE.has(String(m.type))) continue;
    const head = { name: m.name, help: m.help, type: m.type, aggregator: m.aggregator } as Metric;
    for (const v of m.values) out.set(keyOf(m, v), { metric: head, value: v });
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
  const out = new Map<string, Metric>();
  for (const m of metrics) {
    if (!CUMULATIVE.has(String(m.type))) {
      out.set(m.name, m);
      continue;
    }
    out.set(m.name, {
      ...m,
      values: m.values.map((v) => {
        const key = keyOf(m, v);
        seen.add(key);
        const c = carried.get(key);
        return c ? { ...v, value: v.value + c.value.value } : v;
      }),
    } as Metric);
  }
  for (const [key, c] of carried) {
    if (seen.has(key)) continue;
    let m = out.get(c.metric.name);
    if (!m) out.set(c.metric.name, m = { ...c.metric, values: [] } as Metric);
    (m.values as Value[]).push(c.value);
  }
  return [...out.values()] as MetricsJson;
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

/** How prom-client adds up a metric's values over members. */
const AGGREGATORS = new Set(["sum", "first", "min", "max", "average", "omit"]);

/** Whether `m` is series in JSON as prom-client gives them: named metrics of numbered values. */
function isMetrics(m: unknown): m is MetricsJson {
  return Array.isArray(m) &&
    m.every((x) =>
      x !== null && typeof x === "object" && typeof x.name === "string" &&
      typeof x.type === "string" && AGGREGATORS.has(x.aggregator) && Array.isArray(x.values) &&
      x.values.every((v: unknown) =>
        v !== null && typeof v === "object" && Number.isFinite((v as Value).value) &&
        ((v as Value).labels === undefined ||
          ((v as Value).labels !== null && typeof (v as Value).labels === "object"))
      )
    );
}

/** `value` as a member's answer, or undefined when it is not one. */
function asAnswer(value: unknown): MemberAnswer | undefined {
  const a = value as Partial<MemberAnswer> | null;
  return a && typeof a === "object" && isMetrics(a.metrics) ? a as MemberAnswer : undefined;
}

/** The first member did not answer: the group's metrics cannot be shown (503). */
function firstAway(err: unknown): InferxError {
  return new InferxError(
    "unavailable",
    `The gateway group's first process did not answer (${
      err instanceof Error ? err.message : String(err)
    }): the group's metrics are not shown until it does`,
    { retryable: true },
  );
}

/** The group's metrics as one member sees them, scrape after scrape. */
export class GroupMetrics {
  readonly #group: GatewayGroup;
  readonly #local: Registry;
  /** What this member counted in its earlier lives: its base. */
  readonly #base: Flat = new Map();
  /** The first member's: the most each other member ever showed, by its port. */
  readonly #shown = new Map<number, Flat>();
  /** A member but the first: whether it has its base (what the first kept of it). */
  #recalled = false;
  readonly #fetch: (port: number, path: string, body?: unknown) => Promise<unknown>;
  readonly #exists?: (func: string) => boolean;

  /**
   * `fetchMember`: asks the member on `port` for `path`, sending `body` as
   * JSON (POST) when there is one; resolves with its JSON answer, or with
   * null when it had none to give. `exists`: whether a function exists (the
   * series kept of one deleted go).
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
      return res.status === 204 ? null : await res.json();
    });
  }

  get #port(): number {
    return this.#group.ports[this.#group.index];
  }

  get #first(): number {
    return this.#group.ports[0];
  }

  /**
   * This member's answer: its series with its base. A member but the first
   * shows nothing the first has not taken: it reports its series to the
   * first before they are shown, and does not answer (503) when the first
   * does not take them within a second, nor before it has its base.
   */
  async answer(): Promise<MemberAnswer> {
    if (this.#group.index !== 0 && !this.#recalled) await this.#recallOnce();
    forgetGone(this.#base, this.#exists);
    const metrics = withCarried(await this.#local.getMetricsAsJSON(), this.#base);
    if (this.#group.index !== 0) {
      try {
        await this.#fetch(this.#first, "/shown.json", { port: this.#port, metrics });
      } catch (err) {
        throw firstAway(err);
      }
    }
    return { metrics };
  }

  /**
   * The first member: takes the series the member on `port` is about to
   * show. False when `body` is not such a report.
   */
  takeShown(body: unknown): boolean {
    const b = body as { port?: unknown; metrics?: unknown } | null;
    const port = b?.port;
    if (this.#group.index !== 0 || typeof port !== "number" || port === this.#port) return false;
    if (!this.#group.ports.includes(port) || !isMetrics(b!.metrics)) return false;
    let shown = this.#shown.get(port);
    if (!shown) this.#shown.set(port, shown = new Map());
    maxInto(shown, flatten(b!.metrics));
    forgetGone(shown, this.#exists);
    return true;
  }

  /** The first member: the most the member on `port` ever showed. */
  shown(port: number): MetricsJson {
    const shown = this.#shown.get(port);
    if (!shown) return [];
    forgetGone(shown, this.#exists);
    return unflatten(shown);
  }

  /**
   * At start, a member but the first: what the first kept of it is its base,
   * so that nothing it showed before goes down (asked three times, 200 ms
   * apart; the first started it, so it is there). Without it, the member
   * answers nothing, and asks again at each request for its series.
   */
  async recall(): Promise<void> {
    if (this.#group.index === 0) return;
    for (let attempt = 0;; attempt++) {
      try {
        return await this.#recallOnce();
      } catch (err) {
        if (attempt === 2) {
          log.warn("Gateway member {index} could not learn what it counted before: {error}", {
            index: this.#group.index,
            error: String(err),
          });
          return;
        }
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  async #recallOnce(): Promise<void> {
    maxInto(this.#base, flatten(await this.#keptByFirst(this.#port)));
    this.#recalled = true;
  }

  /** What the first member kept of the member on `port`; 503 when it does not answer. */
  async #keptByFirst(port: number): Promise<MetricsJson> {
    let v: unknown;
    try {
      v = await this.#fetch(this.#first, `/shown.json?port=${port}`);
    } catch (err) {
      throw firstAway(err);
    }
    if (!isMetrics(v)) throw firstAway(new Error("not a list of series"));
    return v;
  }

  /**
   * Serves, on 127.0.0.1 (`port`: its private one), this member's answer at
   * `/metrics.json`, and on the first member `/shown.json`: a report of
   * another's series (POST) and what it kept of one (`?port=`).
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
          if (url.pathname === "/metrics.json") {
            try {
              return Response.json(await this.answer());
            } catch (err) {
              return Response.json({ error: String(err) }, { status: 503 });
            }
          }
          if (url.pathname === "/shown.json" && this.#group.index === 0) {
            if (req.method !== "POST") {
              return Response.json(this.shown(Number(url.searchParams.get("port"))));
            }
            if (this.takeShown(await req.json().catch(() => undefined))) {
              return new Response(null, { status: 204 });
            }
            return Response.json({ error: "not a member's report" }, { status: 400 });
          }
          return new Response(null, { status: 404 });
        },
      ));
    return { close: () => server.shutdown() };
  }

  /**
   * Every member's series, this one's included, in the members' order: as
   * they answer within a second, else as the first member kept them. Throws
   * 503 when the first member does not answer (nothing could be shown that
   * it would keep).
   */
  async registry(): Promise<Registry> {
    const parts = await Promise.all(this.#group.ports.map(async (port) => {
      if (port === this.#port) return (await this.answer()).metrics;
      try {
        const a = asAnswer(await this.#fetch(port, "/metrics.json"));
        if (!a) throw new Error("not a member's answer");
        return a.metrics;
      } catch (err) {
        log.warn("Gateway member on port {port} did not give its metrics: {error}", {
          port,
          error: String(err),
        });
        return await this.#kept(port, err);
      }
    }));
    return AggregatorRegistry.aggregate(parts);
  }

  /** What counts for the member on `port` while it does not answer: what the first kept. */
  #kept(port: number, why: unknown): MetricsJson | Promise<MetricsJson> {
    if (port === this.#first) throw firstAway(why);
    return this.#group.index === 0 ? this.shown(port) : this.#keptByFirst(port);
  }
}
