/**
 * Records the core's decisions about functions as Kubernetes-style
 * conditions in each stored function (`object.status.conditions`): today
 * `Schedulable`, whether some node could ever hold a pod. The state service
 * keeps the function's version on such a write (status does not define the
 * workers), and gateways read the condition to refuse calls at once.
 *
 * Writes for one function run one at a time with the latest decision, so an
 * older decision never lands after a newer one; each is a compare-and-swap
 * retried on conflicts, and is skipped when the stored function has moved to
 * another version (the core decides again for that one).
 *
 * @module
 */
import type { Clock } from "../common/clock.ts";
import { logger } from "../common/log.ts";
import { updateWithRetry } from "../common/retry.ts";
import {
  type Condition,
  type FunctionStatus,
  FunctionStatusSchema,
  SCHEDULABLE,
  setCondition,
} from "../model/metadata.ts";
import type { MetaClient } from "../rpc/types.ts";
import type { Schedulability } from "./core/mod.ts";

const log = logger("scheduler", "conditions");

/** How long a decision a function's object had no room for waits before it is tried again (ms). */
const NO_ROOM_RETRY_MS = 10 * 60_000;

/** A decision about a function: its condition, for the version it was made for. */
export interface Decision {
  version: number;
  condition: Schedulability;
}

/** Writes functions' `Schedulable` conditions to the store. */
export class ConditionWriter {
  #meta: MetaClient;
  #clock: Clock;
  #latest = new Map<string, Decision>();
  #running = new Map<string, Promise<void>>();
  /**
   * The decision, by function, that its stored object had no room for (it is
   * near the largest an object may be), and when: not tried again at each
   * re-list, nor said again, for {@linkcode NO_ROOM_RETRY_MS} (the object
   * may shrink without a new version); a new decision, or one written,
   * clears it.
   */
  #noRoom = new Map<string, { key: string; at: number }>();

  constructor(meta: MetaClient, clock: Clock) {
    this.#meta = meta;
    this.#clock = clock;
  }

  /** Records `decision` for function `func` (`tenant/namespace/name`). */
  write(func: string, decision: Decision): void {
    this.#latest.set(func, decision);
    if (!this.#running.has(func)) {
      this.#running.set(func, this.#run(func).finally(() => this.#running.delete(func)));
    }
  }

  /**
   * Writes the core's decision when the stored status disagrees with it
   * (after a restart, or when a write was skipped); nothing when it agrees.
   */
  reconcile(func: string, decision: Decision, stored?: FunctionStatus): void {
    const full = this.#noRoom.get(func);
    if (
      full?.key === JSON.stringify(decision) && this.#clock.now() - full.at < NO_ROOM_RETRY_MS
    ) return;
    if (this.#next(stored?.conditions ?? [], decision.condition)) this.write(func, decision);
  }

  /** Resolves once every write asked for so far has ended. */
  async settled(): Promise<void> {
    while (this.#running.size) await Promise.all(this.#running.values());
  }

  #next(conditions: readonly Condition[], decided: Schedulability): Condition[] | undefined {
    return setCondition(
      conditions,
      { type: SCHEDULABLE, ...decided },
      new Date(this.#clock.now()).toISOString(),
    );
  }

  async #run(func: string): Promise<void> {
    for (let p = this.#latest.get(func); p; p = this.#latest.get(func)) {
      this.#latest.delete(func);
      const key = JSON.stringify(p);
      try {
        await this.#writeOne(func, p);
        this.#noRoom.delete(func);
      } catch (err) {
        const said = this.#noRoom.get(func)?.key === key;
        if ((err as { code?: string }).code === "too_large") {
          this.#noRoom.set(func, { key, at: this.#clock.now() });
        }
        if (said) continue; // said once already
        log.warn("Cannot record the Schedulable condition of {func}: {error}", {
          func,
          error: String(err),
        });
      }
    }
  }

  async #writeOne(func: string, p: Decision): Promise<void> {
    const [tenant, namespace, name] = func.split("/");
    await updateWithRetry(this.#meta, { type: "function", tenant, namespace, name }, (cur) => {
      if (!cur) return undefined;
      const stored = JSON.parse(cur.value) as { version?: number; object?: { status?: unknown } };
      if ((stored.version ?? 0) !== p.version) return undefined;
      const object = stored.object ?? {};
      const status = FunctionStatusSchema.safeParse(object.status ?? {});
      const conditions = this.#next(status.success ? status.data.conditions : [], p.condition);
      return conditions && { ...object, status: { conditions } };
    });
  }
}
