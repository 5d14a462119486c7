/**
 * Tenants' call rates (`quota.max_calls_per_s`) shared out between the
 * gateways: each gateway's share of a tenant's rate and burst is in
 * proportion to the calls it was asked for the tenant since its last
 * heartbeat, so that the gateways together keep to the rate wherever the
 * callers' connections land. A gateway asked nothing holds a small floor
 * (the idle ones together about a twentieth of the rate): all of them idle
 * share alike, and one a caller moves to takes a call at once (its burst
 * is one at least), the rest as its share follows the demand there, at the
 * next heartbeat or two. Gateways not heard for the scheduler's gateway
 * timeout drop out. Pure, as the rest of the core: the service feeds it the
 * quotas it reads and the heartbeats it hears.
 *
 * @module
 */
import {
  type CallDemand,
  type CallRate,
  callRate,
  type CallShare,
  type TenantQuota,
} from "../../model/schemas.ts";

/**
 * The floor every gateway's weight has, as a part of the calls asked of all
 * gateways on average: the idle ones together hold about this part of the
 * rate (an absolute floor held back a fixed share from a busy gateway, the
 * more the more gateways: a third of a low rate over ten of them).
 */
const FLOOR_PART = 0.05;

/** The floor when no gateway was asked anything: all share alike. */
const FLOOR_MIN = 0.001;

interface Heard {
  at: number;
  asked: Map<string, number>;
}

/** The call rates of the tenants that have one, and the gateways' demand for them. */
export class CallRates {
  readonly #rates = new Map<string, CallRate>();
  readonly #gateways = new Map<string, Heard>();
  readonly #timeoutMs: number;

  /** `timeoutMs`: a gateway not heard this long is left out of the shares. */
  constructor(timeoutMs: number) {
    this.#timeoutMs = timeoutMs;
  }

  /** Tenant `tenant`'s quota as stored (undefined: the tenant is gone). */
  setQuota(tenant: string, quota: TenantQuota | undefined): void {
    const rate = quota && callRate(quota);
    if (rate) this.#rates.set(tenant, rate);
    else this.#rates.delete(tenant);
  }

  /**
   * Records the heartbeat of `gateway` with its `demand`, heard at `now`
   * (ms), and answers its shares of every tenant that has a rate, and how
   * many gateways there are.
   */
  heartbeat(
    gateway: string,
    demand: readonly CallDemand[],
    now: number,
  ): { shares: CallShare[]; gateways: number } {
    for (const [id, g] of this.#gateways) {
      if (now - g.at > this.#timeoutMs) this.#gateways.delete(id);
    }
    const asked = new Map<string, number>();
    for (const d of demand) {
      if (Number.isFinite(d.calls) && d.calls > 0) asked.set(d.tenant, d.calls);
    }
    // A gateway heard for the first time (just started, or this scheduler is) has asked nothing
    // yet: it counts as asked as much as the others on average, so that it takes an even part
    // at once rather than the floor until its next heartbeat (a rolling restart's new gateway
    // would refuse most calls for two seconds).
    if (!this.#gateways.has(gateway) && asked.size === 0 && this.#gateways.size > 0) {
      for (const tenant of this.#rates.keys()) {
        let sum = 0;
        for (const g of this.#gateways.values()) sum += g.asked.get(tenant) ?? 0;
        if (sum > 0) asked.set(tenant, sum / this.#gateways.size);
      }
    }
    this.#gateways.set(gateway, { at: now, asked });
    const out: CallShare[] = [];
    const n = this.#gateways.size;
    for (const [tenant, rate] of this.#rates) {
      let sum = 0;
      for (const g of this.#gateways.values()) sum += g.asked.get(tenant) ?? 0;
      const floor = Math.max(FLOOR_MIN, (FLOOR_PART * sum) / n);
      const part = ((asked.get(tenant) ?? 0) + floor) / (sum + floor * n);
      out.push({ tenant, perS: rate.perS * part, burst: Math.max(1, rate.burst * part) });
    }
    return { shares: out, gateways: n };
  }
}
