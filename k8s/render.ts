/**
 * Renders a kustomization offline, for the subset the overlays here use:
 * `resources` (files, or directories with their own kustomization),
 * `namespace`, `images` (`newName`, `newTag`) and strategic-merge `patches`
 * (maps merged; `containers`, `initContainers`, `volumes` and `env` merged
 * by name as Kubernetes does; other lists replaced). The test suite
 * cross-checks it against `kubectl kustomize` where that is installed.
 *
 * @module
 */
import { parseAllDocuments } from "yaml";

/** A Kubernetes object as plain data. */
export type K8sObject = {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; [k: string]: unknown };
  [k: string]: unknown;
};

interface Kustomization {
  namespace?: string;
  resources?: string[];
  images?: { name: string; newName?: string; newTag?: string }[];
  patches?: { path: string }[];
}

const CLUSTER_SCOPED = new Set([
  "Namespace",
  "StorageClass",
  "ClusterRole",
  "ClusterRoleBinding",
  "PersistentVolume",
  "CustomResourceDefinition",
  "IngressClass",
]);

async function readDocs(path: string): Promise<K8sObject[]> {
  const docs = parseAllDocuments(await Deno.readTextFile(path));
  return docs.map((d) => d.toJS()).filter((o) => o && typeof o === "object") as K8sObject[];
}

/** Lists Kubernetes merges item by item, by their `name`. */
const MERGE_BY_NAME = new Set(["containers", "initContainers", "volumes", "env"]);

/** Strategic merge of `patch` into `base` (see the module doc for the rules). */
export function merge(base: unknown, patch: unknown, field = ""): unknown {
  if (Array.isArray(base) && Array.isArray(patch)) {
    if (!MERGE_BY_NAME.has(field)) return structuredClone(patch);
    const out = base.map((x) => structuredClone(x)) as { name: string }[];
    for (const p of patch as { name: string }[]) {
      const k = out.findIndex((x) => x.name === p.name);
      if (k >= 0) out[k] = merge(out[k], p) as { name: string };
      else out.push(structuredClone(p));
    }
    return out;
  }
  if (
    base && patch && typeof base === "object" && typeof patch === "object" && !Array.isArray(patch)
  ) {
    const out: Record<string, unknown> = { ...(base as Record<string, unknown>) };
    for (const [k, v] of Object.entries(patch)) {
      out[k] = k in out ? merge(out[k], v, k) : structuredClone(v);
    }
    return out;
  }
  return structuredClone(patch);
}

function podSpecs(
  o: K8sObject,
): { containers?: { image?: string }[]; initContainers?: { image?: string }[] }[] {
  const spec = o.spec as { template?: { spec?: unknown } } | undefined;
  return spec?.template?.spec ? [spec.template.spec as never] : [];
}

/** Renders the kustomization in `dir` into its objects. */
export async function renderKustomization(dir: string): Promise<K8sObject[]> {
  const k = (await readDocs(`${dir}/kustomization.yaml`))[0] as unknown as Kustomization;
  let objs: K8sObject[] = [];
  for (const r of k.resources ?? []) {
    const path = `${dir}/${r}`;
    const stat = await Deno.stat(path);
    objs.push(...(stat.isDirectory ? await renderKustomization(path) : await readDocs(path)));
  }
  for (const p of k.patches ?? []) {
    for (const patch of await readDocs(`${dir}/${p.path}`)) {
      const i = objs.findIndex((o) =>
        o.kind === patch.kind && o.metadata.name === patch.metadata.name
      );
      if (i < 0) {
        throw new Error(`Cannot apply patch ${p.path}: no ${patch.kind} ${patch.metadata.name}`);
      }
      objs[i] = merge(objs[i], patch) as K8sObject;
    }
  }
  if (k.namespace) {
    objs = objs.map((o) =>
      CLUSTER_SCOPED.has(o.kind) ? o : { ...o, metadata: { ...o.metadata, namespace: k.namespace } }
    );
  }
  for (const img of k.images ?? []) {
    for (const o of objs) {
      for (const spec of podSpecs(o)) {
        for (const c of [...(spec.containers ?? []), ...(spec.initContainers ?? [])]) {
          if (!c.image) continue;
          const [name, tag] = c.image.split(/:(?=[^:/]+$)/);
          if (name !== img.name) continue;
          c.image = `${img.newName ?? name}:${img.newTag ?? tag}`;
        }
      }
    }
  }
  return objs;
}
