/**
 * A tenant's call rate (`quota.max_calls_per_s`, `quota.max_call_burst`) at
 * one gateway: a token bucket per tenant that has one, holding this
 * gateway's share of the rate. The scheduler hands out the shares at each
 * heartbeat, in proportion to the calls each gateway was asked for the
 * tenant (`demand()`), so that the gateways together keep to the rate
 * however a load balancer spreads the callers. A rate without a share yet
 * (its quota just set) is split evenly between the gateways the scheduler
 * last counted; before any heartbeat, and with one gateway, it is whole.
 *
 * A tenant without a rate costs one lookup of its quota a call.
 *
 * @module
 */
import { InferxError } from "../common/errors.ts";
import { type CallRate, defaultBurst, type TenantQuota } from "../model/schemas.ts";
import type { CallDemand, CallShare } from "../rpc/types.ts";
import type { FuncTarget } from "./proxy.ts";

/**
 * The longest wait a refusal under the scheduler's share advises: its next
 * heartbeat's (2 s), when the share may have grown with the calls asked.
 */
const SHARE_WAIT_MS = 2000;

interface Bucket {
  tokens: number;
  /** Calls refused since the last one taken: the turn the next refused one is told. */
  waiting: number;
  /** When `tokens` was last filled (ms). */
  at: number;
}

/** The call rates of one gateway. */
export class CallLimiter {
  readonly #quota: (tenant: string) => TenantQuota;
  readonly #now: () => number;
  readonly #buckets = new Map<string, Bucket>();
  readonly #shares = new Map<string, CallRate>();
  /** The gateways there are, as the scheduler last said. */
  #gateways = 1;
  #asked = new Map<string, number>();

  /** `quota`: a tenant's quota as this gateway knows it. */
  constructor(
    quota: (tenant: string) => TenantQuota,
    now: () => number = () => performance.now(),
  ) {
    this.#quota = quota;
    this.#now = now;
  }

  /** Takes a call of `target`, or refuses it (429 `quota_exceeded`) when its tenant is at its rate. */
  admit(target: FuncTarget): void {
    const quota = this.#quota(target.tenant);
    const rate = quota.max_calls_per_s;
    if (rate === undefined) return;
    const tenant = target.tenant;
    // Read in place, as `callRate` would make them (no object a call).
    const wholeBurst = quota.max_call_burst ?? defaultBurst(rate);
    this.#asked.set(tenant, (this.#asked.get(tenant) ?? 0) + 1);
    const share = this.#shares.get(tenant);
    // A share from before the quota changed is never more than the quota; a rate that has none
    // yet (its quota just set) is split evenly until the next heartbeat.
    const n = this.#gateways;
    const perS = Math.min(share?.perS ?? rate / n, rate);
    const burst = Math.min(share?.burst ?? Math.max(1, wholeBurst / n), wholeBurst);
    const now = this.#now();
    let b = this.#buckets.get(tenant);
    if (!b) this.#buckets.set(tenant, b = { tokens: burst, at: now, waiting: 0 });
    else {
      b.tokens = Math.min(burst, b.tokens + ((now - b.at) * perS) / 1000);
      b.at = now;
    }
    if (b.tokens >= 1) {
      b.tokens -= 1;
      b.waiting = 0;
      return;
    }
    // Each caller refused since the last call taken is told a later turn (the second the one
    // after the next token, ...): told alike, callers of OpenAI's clients, which wait exactly
    // what they are told, all came back at once and all but one were refused again. A share is
    // the scheduler's for now: it follows the calls asked here at the next heartbeat.
    b.waiting++;
    const waitMs = Math.min(
      Math.ceil(((b.waiting - b.tokens) * 1000) / perS),
      share || n > 1 ? SHARE_WAIT_MS : Infinity,
    );
    const f = `${target.tenant}/${target.namespace}/${target.func}`;
    throw new InferxError(
      "quota_exceeded",
      `Cannot call ${f}: tenant ${tenant} is at its max_calls_per_s quota (${rate} a ` +
        `second, ${wholeBurst} at once): try again in ${waitMs} ms`,
      {
        retryable: true,
        details: {
          limit: "max_calls_per_s",
          quota: rate,
          retry_after_s: Math.max(1, Math.ceil(waitMs / 1000)),
          retry_after_ms: waitMs,
        },
      },
    );
  }

  /** The calls asked of each tenant with a rate since the last time, for the heartbeat. */
  demand(): CallDemand[] {
    const out = [...this.#asked].map(([tenant, calls]) => ({ tenant, calls }));
    this.#asked = new Map();
    return out;
  }

  /**
   * This gateway's shares, from the scheduler's answer to a heartbeat, and
   * the number of gateways it hears from (a tenant it gives no share takes
   * an even part of its rate). Buckets of tenants without a rate now go.
   */
  advise(shares: readonly CallShare[], gateways = 1): void {
    this.#gateways = Math.max(1, gateways);
    this.#shares.clear();
    for (const s of shares) this.#shares.set(s.tenant, { perS: s.perS, burst: s.burst });
    for (const tenant of this.#buckets.keys()) {
      if (this.#quota(tenant).max_calls_per_s === undefined) this.#buckets.delete(tenant);
    }
  }
}
