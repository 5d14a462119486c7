/**
 * `ctl apply` and `ctl diff`: make the platform hold the objects of a file or
 * a directory, as `kubectl apply` does for Kubernetes, so that a repository
 * of objects can drive the platform (GitOps).
 *
 * - apply creates what is missing and updates what differs; an object equal
 *   to the stored one is left alone (`unchanged`: same revision, same
 *   version, its workers keep running). Every object it writes carries the
 *   annotation `inferx.io/applied-by: ctl`.
 * - `--dry-run` sends every write with `?dryRun=1`: the state service
 *   validates and admits it, nothing is written.
 * - `-l SELECTOR` applies only the objects whose labels match.
 * - `--prune` (with `-l`) also deletes the functions and policies of the
 *   same namespaces that carry the annotation and match the selector but are
 *   no longer in the files. Unless `--yes`, it asks first, before writing
 *   anything: no answer, nothing applied.
 * - diff prints, field by field, what apply would change (from the server's
 *   dry run, so defaults and versions are the server's), and what it would
 *   prune.
 *
 * @module
 */
import { ValidationError } from "../common/errors.ts";
import { APPLIED_BY_ANNOTATION, selectorMatches } from "../model/metadata.ts";
import { decodeUserObject } from "../model/schemas.ts";
import { appliedForm, ObjectFileError, readObjectFiles } from "../model/object_files.ts";
import { CliError, type Ctl, ensureOk, type Io, readLine, type Send } from "./_shared.ts";
import { fieldDiff, formatChange } from "./diff.ts";

/** Options of {@linkcode applyObjects} and {@linkcode diffObjects}. */
export interface ApplyOptions {
  /** Validate every write on the server, write nothing. @default false */
  dryRun?: boolean;
  /** Label selector (`key=value,key!=value,key`): only matching objects are applied and pruned. */
  selector?: string;
  /** Delete applied objects of the same namespaces that the files no longer have. @default false */
  prune?: boolean;
  /** Prune without asking. @default false */
  yes?: boolean;
}

/** An object as the files hold it and the gateway answers it. */
// deno-lint-ignore no-explicit-any
type Obj = Record<string, any>;

/** Types `--prune` deletes: those that live in a namespace. */
const PRUNED = ["function", "funcpolicy"] as const;

const idOf = (o: Obj) => `${o.type} ${o.tenant}/${o.namespace}/${o.name}`;
const pathOf = (o: Obj) => `/object/${o.type}/${o.tenant}/${o.namespace}/${o.name}`;
const isMap = (v: unknown): v is Obj => !!v && typeof v === "object" && !Array.isArray(v);

/** The files `-f` names say, as messages name them. */
const sourcesText = (sources: readonly string[]) => sources.join(", ");

/** The objects of `sources` (`model/object_files.ts`), its errors the command's. */
export async function readObjects(sources: readonly string[]): Promise<Obj[]> {
  try {
    return await readObjectFiles(sources);
  } catch (err) {
    throw err instanceof ObjectFileError ? new CliError(err.message) : err;
  }
}

const labelsOf = (o: Obj): Record<string, string> => o.object?.metadata?.labels ?? {};

/** The objects of `sources` that the selector selects, prepared, in creation order. */
async function selected(
  sources: readonly string[],
  io: Io,
  selector?: string,
): Promise<{ objs: Obj[]; all: Obj[] }> {
  const out: Obj[] = [];
  const all = await readObjects(sources);
  for (const o of all) {
    const labels = labelsOf(o);
    for (const [k, v] of isMap(labels) ? Object.entries(labels) : []) {
      // Else a selector would skip it unseen, where the server refuses it.
      if (typeof v !== "string") {
        throw new CliError(
          `Cannot apply ${idOf(o)}: label ${k} is ${
            JSON.stringify(v)
          }, not a string (quote it in YAML)`,
        );
      }
    }
    if (selector !== undefined && !selects(selector, labels)) {
      io.err(`skipped ${idOf(o)}: its labels do not match -l ${selector}`);
      continue;
    }
    out.push(appliedForm(o));
  }
  return { objs: out, all };
}

function selects(selector: string, labels: Record<string, string>): boolean {
  try {
    return selectorMatches(selector, labels);
  } catch (err) {
    throw new CliError((err as Error).message);
  }
}

/** The stored object, or undefined when there is none. */
async function live(send: Send, o: Obj): Promise<Obj | undefined> {
  const r = await send("GET", pathOf(o));
  if (r.status === 404) return undefined;
  return ensureOk("GET", pathOf(o), r).json;
}

/** What an update does to a function's version (nothing for other types). */
function versionNote(before: Obj, after: Obj, long = false): string {
  if (typeof before.version !== "number") return "";
  if (before.version === after.version) {
    return ` (version ${before.version} kept${long ? ": its workers keep running" : ""})`;
  }
  return ` (version ${before.version} -> ${after.version}${
    long ? ": its workers are replaced" : ""
  })`;
}

/** The objects `o` needs stored before it (as `idOf` names them): its parents, its policy. */
function needs(o: Obj): string[] {
  if (o.type === "namespace") return [`tenant system/system/${o.tenant}`];
  if (o.type !== "function" && o.type !== "funcpolicy") return [];
  const out = [`namespace ${o.tenant}/system/${o.namespace}`];
  const link = o.object?.spec?.policy?.Link?.name;
  if (o.type === "function" && typeof link === "string") {
    out.push(`funcpolicy ${o.tenant}/${o.namespace}/${link}`);
  }
  return out;
}

/**
 * What a dry run (`apply --dry-run`, `diff`) would create: the server
 * cannot admit an object whose parent only this run would create (its
 * dry run writes nothing), so such an object is reported without asking.
 */
class DryCreates {
  #ids = new Set<string>();
  /** The object `o` waits for, if this run would create it first. */
  after(o: Obj): string | undefined {
    return needs(o).find((id) => this.#ids.has(id));
  }
  add(o: Obj): void {
    this.#ids.add(idOf(o));
  }
}

/**
 * Checks `o`, whose parent only this dry run would create (the server is not
 * asked), against the object's schema here: a dry run does not call created
 * what the server would refuse (a function without its image, say).
 */
function checkLocally(o: Obj): void {
  try {
    decodeUserObject(o);
  } catch (err) {
    if (!(err instanceof ValidationError)) throw err;
    throw new CliError(`${idOf(o)}: 400 ${err.message} (checked here: its parent is not made yet)`);
  }
}

/** Applies one prepared object; returns the line to print. */
async function applyOne(send: Send, o: Obj, dryRun: boolean, creates: DryCreates): Promise<string> {
  const q = dryRun ? "?dryRun=1" : "";
  const dry = dryRun ? " (dry run)" : "";
  for (let attempt = 1;; attempt++) {
    const cur = await live(send, o);
    // A 409 means someone else wrote it meanwhile: read again and apply over it.
    const again = (status: number) => status === 409 && attempt < 3;
    if (!cur) {
      const parent = dryRun ? creates.after(o) : undefined;
      creates.add(o);
      if (parent) return (checkLocally(o), `created ${idOf(o)} (dry run, after ${parent})`);
      const r = await send("PUT", `/object/${q}`, o);
      if (again(r.status)) continue;
      ensureOk("PUT", "/object/", r);
      return `created ${idOf(o)}${dry}`;
    }
    const r = await send("POST", `/object/${q}`, { ...o, revision: cur.revision });
    if (again(r.status)) continue;
    ensureOk("POST", "/object/", r);
    if (r.json.unchanged) return `unchanged ${idOf(o)}${dry}`;
    return `updated ${idOf(o)}${versionNote(cur, r.json)}${dry}`;
  }
}

/**
 * The objects of `sources` to apply (those the selector selects, prepared)
 * and, with `prune`, the stored ones to delete.
 */
async function desired(send: Send, sources: readonly string[], io: Io, options: ApplyOptions) {
  if (options.prune && options.selector === undefined) {
    throw new CliError("--prune needs -l SELECTOR: the labels of the objects these files own");
  }
  const { objs, all } = await selected(sources, io, options.selector);
  // What the files still have, and the namespaces they fill, from every object read: the
  // selector picks what is applied and what may be deleted, not what the files hold.
  const doomed = options.prune ? await pruneCandidates(send, all, options.selector!) : [];
  return { objs, doomed };
}

/** Runs `ctl apply -f source...`. */
export async function applyObjects(
  { send, io }: Ctl,
  sources: readonly string[],
  options: ApplyOptions = {},
): Promise<void> {
  const { objs, doomed } = await desired(send, sources, io, options);
  if (doomed.length && !options.dryRun && !options.yes) {
    await confirmPrune(sources, doomed, io, options);
  }
  const creates = new DryCreates();
  for (const o of objs) io.out(await applyOne(send, o, options.dryRun ?? false, creates));
  for (const d of doomed) {
    if (options.dryRun) {
      io.out(`deleted ${idOf(d)} (dry run)`);
      continue;
    }
    const path = `${pathOf(d)}?revision=${d.revision}`;
    ensureOk("DELETE", path, await send("DELETE", path));
    io.out(`deleted ${idOf(d)}`);
  }
}

/**
 * Applied objects (they carry the annotation) that `selector` selects, in
 * the namespaces `objs` (every object the files hold) fill, that `objs` no
 * longer has: functions first.
 */
async function pruneCandidates(send: Send, objs: Obj[], selector: string): Promise<Obj[]> {
  const scopes = new Set<string>();
  for (const o of objs) {
    if ((PRUNED as readonly string[]).includes(o.type)) scopes.add(`${o.tenant}/${o.namespace}`);
    if (o.type === "namespace") scopes.add(`${o.tenant}/${o.name}`);
  }
  const keep = new Set(objs.map(idOf));
  const out: Obj[] = [];
  for (const type of PRUNED) {
    for (const scope of [...scopes].sort()) {
      const path = `/objects/${type}/${scope}`;
      const r = ensureOk("GET", path, await send("GET", path));
      for (const item of r.json.items as Obj[]) {
        const meta = item.object?.metadata ?? {};
        if (keep.has(idOf(item)) || meta.annotations?.[APPLIED_BY_ANNOTATION] === undefined) {
          continue;
        }
        if (selects(selector, meta.labels ?? {})) out.push(item);
      }
    }
  }
  return out;
}

/** Asks before pruning `doomed`; throws unless the answer is yes. */
async function confirmPrune(
  sources: readonly string[],
  doomed: Obj[],
  io: Io,
  options: ApplyOptions,
) {
  const n = doomed.length;
  if (sources.includes("-")) {
    throw new CliError(
      `Cannot ask before pruning ${n} object(s): the objects came from stdin; pass --yes`,
    );
  }
  const which = n === 1 ? "this object" : `these ${n} objects`;
  io.err(`${sourcesText(sources)} no longer has ${which} (-l ${options.selector}):`);
  for (const d of doomed) io.err(`  ${idOf(d)}`);
  const ask = io.ask ?? ((q: string) => (io.err(q), readLine()));
  const answer = await ask(`Delete ${n === 1 ? "it" : "them"}? [y/N] `);
  if (!/^y(es)?$/i.test(answer.trim())) {
    throw new CliError(
      `Nothing applied: deleting ${n} object(s) was not confirmed (answer y, or pass --yes)`,
    );
  }
}

/**
 * Runs `ctl diff -f source...`: prints what apply would change, field by
 * field, and a summary; resolves whether anything would change.
 */
export async function diffObjects(
  { send, io }: Ctl,
  sources: readonly string[],
  options: ApplyOptions = {},
): Promise<boolean> {
  const { objs, doomed } = await desired(send, sources, io, options);
  const n = { create: 0, update: 0, unchanged: 0, delete: 0 };
  const compared = (e: Obj) => ({
    object: { metadata: e.object?.metadata, spec: e.object?.spec },
  });
  const creates = new DryCreates();
  for (const o of objs) {
    const cur = await live(send, o);
    if (!cur) {
      const parent = creates.after(o);
      creates.add(o);
      if (!parent) ensureOk("PUT", "/object/", await send("PUT", "/object/?dryRun=1", o));
      else checkLocally(o);
      io.out(`${idOf(o)}: would be created${parent ? ` (after ${parent})` : ""}`);
      n.create++;
      continue;
    }
    const r = ensureOk(
      "POST",
      "/object/",
      await send("POST", "/object/?dryRun=1", { ...o, revision: cur.revision }),
    );
    if (r.json.unchanged) {
      n.unchanged++;
      continue;
    }
    n.update++;
    io.out(`${idOf(o)}: would be updated${versionNote(cur, r.json, true)}`);
    for (const c of fieldDiff(compared(cur), compared(r.json))) io.out(`  ${formatChange(c)}`);
  }
  for (const d of doomed) {
    io.out(`${idOf(d)}: would be deleted (no longer in ${sourcesText(sources)})`);
    n.delete++;
  }
  const parts = [`${n.create} to create`, `${n.update} to update`, `${n.unchanged} unchanged`];
  if (options.prune) parts.push(`${n.delete} to delete`);
  io.out(parts.join(", "));
  return n.create + n.update + n.delete > 0;
}
