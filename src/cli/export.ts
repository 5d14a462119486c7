/**
 * `ctl export`: the objects a caller may read — tenants, namespaces,
 * function policies and functions — as YAML documents that `ctl apply -f`
 * takes back, parents first: a backup of a platform's metadata, a copy of
 * one onto another, or the first commit of a GitOps repository.
 *
 * What is exported is each object as stored (`metadata` and `spec`), not
 * its revision, its status or its function's older versions: applied back
 * to the same platform nothing changes; applied elsewhere, a function
 * starts at version 1 with the newest spec taking every call (an inline
 * `traffic` split naming other versions is refused there, and said here).
 * API keys are not exported (the platform keeps their hashes only), nor
 * asynchronous calls, nodes or pods.
 *
 * @module
 */
import { stringify } from "yaml";
import { selectorMatches } from "../model/metadata.ts";
import { CREATION_ORDER } from "../model/object_files.ts";
import { CliError, type Ctl, ensureOk } from "./_shared.ts";

/** An object as the gateway answers it. */
// deno-lint-ignore no-explicit-any
type Obj = Record<string, any>;

/** Options of {@linkcode exportObjects}. */
export interface ExportOptions {
  /** `TENANT` or `TENANT/NS`: only what lies there (a tenant's own object with `TENANT`). */
  scope?: string;
  /** Label selector (`key=value,key!=value,key`): only the objects whose labels match. */
  selector?: string;
}

/** Whether `o` lies in `scope` (`[tenant]` or `[tenant, namespace]`). */
function inScope(o: Obj, scope: string[]): boolean {
  const [tenant, namespace] = scope;
  if (o.type === "tenant") return namespace === undefined && o.name === tenant;
  if (o.tenant !== tenant) return false;
  if (namespace === undefined) return true;
  return o.type === "namespace" ? o.name === namespace : o.namespace === namespace;
}

/** `o` as a file holds it: its ids, and its `metadata` (when it has any) and `spec`. */
function fileForm(o: Obj): Obj {
  const meta: Obj = {};
  for (const k of ["labels", "annotations"]) {
    const v = o.object?.metadata?.[k];
    if (v && Object.keys(v).length) meta[k] = v;
  }
  return {
    type: o.type,
    tenant: o.tenant,
    namespace: o.namespace,
    name: o.name,
    object: { ...(Object.keys(meta).length ? { metadata: meta } : {}), spec: o.object?.spec ?? {} },
  };
}

/**
 * Says on `io.err` what of function `o` holds only on the platform it came
 * from, since versions do not carry over (applied elsewhere, a function is
 * version 1): an inline `traffic` split that names another version (kept:
 * applied back here it holds; applied elsewhere it is refused until taken
 * out), and a rollout under way.
 */
function noteVersions(o: Obj, io: Ctl["io"]): void {
  const id = `function ${o.tenant}/${o.namespace}/${o.name}`;
  const traffic = o.object?.spec?.policy?.Obj?.traffic as
    | { version: number; percent: number }[]
    | undefined;
  if (traffic?.some((t) => t.version !== 1)) {
    const split = traffic.map((t) => `v${t.version} ${t.percent}%`).join(", ");
    io.err(
      `note: ${id}: its traffic split (${split}) names its versions: applied to another ` +
        `platform, where it would be version 1, take policy.Obj.traffic out first`,
    );
  }
  if (o.stable_version !== undefined && o.stable_version !== o.version) {
    io.err(
      `note: ${id} is rolling out (version ${o.version}, stable ${o.stable_version}): its ` +
        `newest spec is exported, which applied elsewhere takes every call`,
    );
  }
}

/**
 * Runs `ctl export [TENANT[/NS]] [-l SELECTOR]`: prints the objects as YAML
 * documents on `io.out`, and what is left out of them on `io.err` (a
 * function's rollout under way). Returns how many were printed.
 */
export async function exportObjects({ send, io }: Ctl, options: ExportOptions = {}) {
  const scope = options.scope?.split("/");
  if (scope && (scope.length > 2 || scope.some((p) => p === ""))) {
    throw new CliError(`export "${options.scope}": give TENANT or TENANT/NAMESPACE`);
  }
  if (options.selector !== undefined) {
    try {
      selectorMatches(options.selector, {});
    } catch (err) {
      throw new CliError((err as Error).message);
    }
  }
  const docs: string[] = [];
  /** What the export holds, by `type tenant/namespace/name`. */
  const held = new Set<string>();
  const links: { from: string; to: string }[] = [];
  for (const type of CREATION_ORDER) {
    const path = `/objects/${type}`;
    const items = ensureOk("GET", path, await send("GET", path)).json.items as Obj[];
    const kept = items
      .filter((o) => !scope || inScope(o, scope))
      .filter((o) =>
        options.selector === undefined ||
        selectorMatches(options.selector, o.object?.metadata?.labels ?? {})
      )
      .sort((a, b) =>
        `${a.tenant}/${a.namespace}/${a.name}` < `${b.tenant}/${b.namespace}/${b.name}` ? -1 : 1
      );
    for (const o of kept) {
      const file = fileForm(o);
      const id = `${type} ${o.tenant}/${o.namespace}/${o.name}`;
      held.add(id);
      if (type === "function") {
        noteVersions(o, io);
        const link = o.object?.spec?.policy?.Link?.name;
        if (typeof link === "string") {
          links.push({ from: id, to: `funcpolicy ${o.tenant}/${o.namespace}/${link}` });
        }
      }
      docs.push(stringify(file));
    }
  }
  // Applied elsewhere, a function whose linked policy is not there is refused (404).
  for (const { from, to } of links) {
    if (held.has(to)) continue;
    io.err(
      `note: ${from} links ${to}, which is not exported (its labels do not match, or this key ` +
        `may not read it): applied elsewhere, that policy must be there first`,
    );
  }
  if (docs.length) io.out(docs.map((d) => `---\n${d}`).join("").trimEnd());
  if (!docs.length) {
    // A backup with a key that reads nothing, or a misspelt tenant, fails rather than writes an
    // empty file and says it succeeded.
    const where = options.scope ? ` in ${options.scope}` : "";
    const which = options.selector === undefined
      ? ""
      : ` with labels matching -l ${options.selector}`;
    throw new CliError(`Nothing to export: no object${where}${which} this key may read`);
  }
  io.err(`exported ${docs.length} object(s)`);
  return docs.length;
}
