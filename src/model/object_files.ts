/**
 * Files of objects, as `ctl apply` and the platform's samples
 * (`INFERX_SAMPLES`) read them: JSON or YAML files (one object, a list, or
 * several YAML documents), every `.json`, `.yaml` and `.yml` file of a
 * directory (not its subdirectories; links to files followed, as a
 * Kubernetes ConfigMap's are), or `-` for stdin (once).
 *
 * @module
 */
import { parseAllDocuments } from "yaml";
import { APPLIED_BY_ANNOTATION } from "./metadata.ts";
import { strayEnvelopeKey } from "./schemas.ts";

/** An object as a file holds it. */
// deno-lint-ignore no-explicit-any
export type FileObject = Record<string, any>;

/** A file that cannot be read, or holds something that is no object: the message names it. */
export class ObjectFileError extends Error {}

/** The value of the applied-by annotation that `ctl apply` and the samples write. */
const APPLIED_BY = "ctl";

/**
 * An object as `ctl apply` sends it, and the samples are made: `object` in
 * its `{metadata, spec}` form with the applied-by annotation (so that a
 * later apply of the same file finds it unchanged), without `status` or a
 * revision.
 */
export function appliedForm(o: FileObject): FileObject {
  const { type, tenant, namespace, name } = o;
  const given = o.object ?? {};
  const parts: FileObject = isMap(given) && ("spec" in given || "metadata" in given)
    ? { ...given }
    : { spec: given };
  delete parts.status;
  const meta = parts.metadata ?? {};
  if (isMap(meta)) {
    parts.metadata = {
      ...meta,
      annotations: { ...(meta.annotations ?? {}), [APPLIED_BY_ANNOTATION]: APPLIED_BY },
    };
  }
  return { type, tenant, namespace, name, object: parts };
}

/** The types a file of objects holds, in creation order: parents first. */
export const CREATION_ORDER = ["tenant", "namespace", "funcpolicy", "function"] as const;

const idOf = (o: FileObject) => `${o.type} ${o.tenant}/${o.namespace}/${o.name}`;
const isMap = (v: unknown): v is FileObject => !!v && typeof v === "object" && !Array.isArray(v);

/** The files of directory `dir` that are read: `.json`, `.yaml`, `.yml` (any case), links followed. */
async function dirFiles(dir: string): Promise<string[]> {
  const files: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (!/\.(json|ya?ml)$/i.test(e.name)) continue;
    const path = `${dir}/${e.name}`;
    // A link (a Kubernetes ConfigMap's files are) counts as what it leads to.
    if (e.isFile || (e.isSymlink && (await Deno.stat(path)).isFile)) files.push(path);
  }
  return files.sort();
}

/**
 * The objects of `sources`, in creation order (tenants, namespaces,
 * policies, functions). Each must name its type, tenant, namespace and name,
 * once. None at all is an error unless `allowNone`.
 */
export async function readObjectFiles(
  sources: readonly string[],
  options: { allowNone?: boolean } = {},
): Promise<FileObject[]> {
  const named = sources.join(", ");
  if (sources.filter((s) => s === "-").length > 1) {
    throw new ObjectFileError(`Cannot read ${named}: stdin (-) can be read once`);
  }
  const files: string[] = [];
  for (const source of sources) {
    try {
      if (source !== "-" && (await Deno.stat(source)).isDirectory) {
        files.push(...await dirFiles(source));
      } else files.push(source);
    } catch (err) {
      throw new ObjectFileError(`Cannot read ${source}: ${(err as Error).message}`);
    }
  }
  const objs: FileObject[] = [];
  const seen = new Map<string, string>();
  for (const file of files) {
    for (const [i, o] of (await readFile(file)).entries()) {
      for (const f of ["type", "tenant", "namespace", "name"]) {
        if (o[f] === undefined || o[f] === "") {
          throw new ObjectFileError(`Cannot apply ${file}: object ${i + 1} has no ${f}`);
        }
        if (typeof o[f] !== "string") {
          throw new ObjectFileError(
            `Cannot apply ${file}: the ${f} of object ${i + 1} is ${
              JSON.stringify(o[f])
            }, not a string (quote it in YAML)`,
          );
        }
      }
      const stray = strayEnvelopeKey(o);
      if (stray) {
        throw new ObjectFileError(
          `Cannot apply ${file}: object ${i + 1} (${idOf(o)}): ${stray.key}: ${stray.why}`,
        );
      }
      const first = seen.get(idOf(o));
      if (first !== undefined) {
        throw new ObjectFileError(
          `Cannot apply ${named}: ${idOf(o)} appears twice (${first}, ${file})`,
        );
      }
      seen.set(idOf(o), file);
      objs.push(o);
    }
  }
  if (objs.length === 0 && !options.allowNone) {
    throw new ObjectFileError(`Cannot apply ${named}: it holds no objects`);
  }
  const rank = (t: string) => (CREATION_ORDER as readonly string[]).indexOf(t);
  return objs.sort((a, b) => rank(a.type) - rank(b.type));
}

async function readFile(file: string): Promise<FileObject[]> {
  let text: string;
  try {
    text = file === "-"
      ? await new Response(Deno.stdin.readable).text()
      : await Deno.readTextFile(file);
  } catch (err) {
    throw new ObjectFileError(`Cannot read ${file}: ${(err as Error).message}`);
  }
  const objs: FileObject[] = [];
  for (const d of parseAllDocuments(text)) {
    if (d.errors.length) {
      throw new ObjectFileError(`Cannot parse ${file}: ${d.errors[0].message}`);
    }
    const v = d.toJS();
    if (v === null || v === undefined) continue;
    for (const o of Array.isArray(v) ? v : [v]) {
      if (!isMap(o)) {
        throw new ObjectFileError(`Cannot apply ${file}: every object must be a mapping`);
      }
      objs.push(o);
    }
  }
  return objs;
}
