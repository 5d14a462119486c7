/**
 * A watched cache of one object type, built on {@linkcode MetaClient}: list,
 * then watch from the list's revision; when the store has compacted that
 * history, list again and report what disappeared meanwhile. With
 * `resyncMs`, it also lists again every so often (anti-entropy): a change a
 * handler could not act on, when the store was away, is delivered again.
 *
 * @module
 */
import { logger } from "../common/log.ts";
import type { ObjectType } from "../model/keys.ts";
import type { MetaClient, MetaRecord, ObjectRef } from "./types.ts";

const log = logger("informer");

/** Callbacks of an informer. */
export interface InformerHandlers {
  upsert(record: MetaRecord): void;
  /**
   * `ref` is gone as of store revision `revision` (a delete's, or for one
   * found gone by a new list, the list's).
   */
  remove(ref: ObjectRef, revision: number): void;
}

/** A running informer. */
export interface Informer {
  stop(): void;
}

/** Options for {@linkcode startInformer}. */
export interface InformerOptions {
  tenant?: string;
  namespace?: string;
  /** Delay before listing again after a watch error (ms). @default 500 */
  retryMs?: number;
  /**
   * Lists again this often (ms), delivering every object anew and reporting
   * those gone; the watch restarts from the new list. Off when unset.
   */
  resyncMs?: number;
}

/** Of the lists that fail in a row, every this many is logged (the first included). */
const LIST_FAILURES_SAID = 20;

/**
 * Lists `type`, calls `upsert` for each object, then follows changes. Resolves
 * once the first list has been delivered.
 */
export async function startInformer(
  meta: MetaClient,
  type: ObjectType,
  handlers: InformerHandlers,
  options: InformerOptions = {},
): Promise<Informer> {
  const known = new Map<string, ObjectRef>();
  let watch: { cancel(): void } | undefined;
  let stopped = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let resyncTimer: ReturnType<typeof setTimeout> | undefined;
  // The watch of the latest list; an error of an earlier one is old news.
  let generation = 0;
  const keyOf = (r: ObjectRef) => `${r.tenant}/${r.namespace}/${r.name}`;
  // A record its handler cannot take (stored by another version of the platform, say) is
  // passed over, said each time it comes: it must not stop the role that follows them.
  const upsert = (rec: MetaRecord) => {
    try {
      handlers.upsert(rec);
    } catch (err) {
      log.error("Cannot take {type} {name}, passed over until it is written again: {error}", {
        type,
        name: keyOf(rec),
        error: (err as Error).message,
      });
    }
  };

  // Lists that failed in a row: said at the first and every LIST_FAILURES_SAID-th after
  // (the retries come every half second while the state service is away), and at the end.
  let failures = 0;
  const listFailed = (e: unknown) => {
    if (failures++ % LIST_FAILURES_SAID !== 0) return;
    log.warn("Cannot list {type} yet ({n} tries): {error}", {
      type,
      n: failures,
      error: (e as Error).message,
    });
  };

  const sync = async () => {
    const gen = ++generation;
    // One watch at a time: the one before goes, and a sync overtaken by a later one (a retry
    // and the periodic resync can both start one) stops after its list.
    watch?.cancel();
    watch = undefined;
    const { items, revision } = await meta.list(type, options.tenant, options.namespace);
    if (failures) log.info("Listed {type} again after {n} tries", { type, n: failures + 1 });
    failures = 0;
    if (stopped || gen !== generation) return;
    const seen = new Set<string>();
    for (const rec of items) {
      seen.add(keyOf(rec));
      known.set(keyOf(rec), refOf(rec));
      upsert(rec);
    }
    for (const [k, ref] of known) {
      if (!seen.has(k)) {
        known.delete(k);
        handlers.remove(ref, revision);
      }
    }
    watch = meta.watch(type, {
      tenant: options.tenant,
      namespace: options.namespace,
      afterRevision: revision,
      onEvent(ev) {
        if (ev.type === "put") {
          known.set(keyOf(ev.record), refOf(ev.record));
          upsert(ev.record);
        } else {
          known.delete(keyOf(ev.ref));
          handlers.remove(ev.ref, ev.revision);
        }
      },
      onError(err) {
        if (stopped || gen !== generation) return;
        log.warn("Watch on {type} ended ({error}); listing again", { type, error: err.message });
        resync();
      },
    });
    if (options.resyncMs !== undefined) {
      if (resyncTimer !== undefined) clearTimeout(resyncTimer);
      resyncTimer = setTimeout(() => {
        resyncTimer = undefined;
        if (stopped || gen !== generation) return;
        watch?.cancel();
        watch = undefined;
        sync().catch((e) => {
          listFailed(e);
          if (!stopped) resync();
        });
      }, options.resyncMs);
    }
  };
  // Lists again until it works (the state service may be restarting).
  const resync = () => {
    if (timer !== undefined) return; // one retry pending at a time
    timer = setTimeout(() => {
      timer = undefined;
      sync().catch((e) => {
        listFailed(e);
        if (!stopped) resync();
      });
    }, options.retryMs ?? 500);
  };
  await sync();
  return {
    stop() {
      stopped = true;
      watch?.cancel();
      if (timer !== undefined) clearTimeout(timer);
      if (resyncTimer !== undefined) clearTimeout(resyncTimer);
    },
  };
}

/** The name of a record without its value, so an informer keeps no values. */
function refOf(r: ObjectRef): ObjectRef {
  return { type: r.type, tenant: r.tenant, namespace: r.namespace, name: r.name };
}
