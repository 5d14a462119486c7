/**
 * The Kubernetes manifests: every overlay rendered (and, where kubectl is
 * installed, compared with `kubectl kustomize`), every object validated
 * offline against the Kubernetes schemas, and the rules that matter checked.
 */
import assert from "node:assert/strict";
import { ConfigMap, Namespace, Secret, Service, ServiceAccount } from "kubernetes-models/v1";
import { DaemonSet, Deployment, StatefulSet } from "kubernetes-models/apps/v1";
import { Ingress, NetworkPolicy } from "kubernetes-models/networking.k8s.io/v1";
import { StorageClass } from "kubernetes-models/storage.k8s.io/v1";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import { parseAllDocuments } from "yaml";
import { type K8sObject, merge, renderKustomization } from "../k8s/render.ts";
import { CONFIG_ENV } from "../src/common/config.ts";

const K8S = new URL("../k8s", import.meta.url).pathname;
const OVERLAYS = ["onprem", "eks"];

// deno-lint-ignore no-explicit-any
const MODELS: Record<string, new (o: any) => { validate(): void }> = {
  Namespace,
  Secret,
  ConfigMap,
  Service,
  ServiceAccount,
  Deployment,
  StatefulSet,
  DaemonSet,
  NetworkPolicy,
  Ingress,
  StorageClass,
  ServiceMonitor,
  PodDisruptionBudget,
};

/** DESIGN.md: one image per role, its RUN_SERVICE, its port. */
const ROLES: Record<string, { kind: string; runService: string; port: number; env: string[] }> = {
  statesvc: {
    kind: "Deployment",
    runService: "StateSvc",
    port: 1237,
    env: ["ETCD_ADDRS", "INFERX_BIND", "INFERX_CLUSTER_TOKEN"],
  },
  scheduler: {
    kind: "StatefulSet",
    runService: "Scheduler",
    port: 1238,
    env: ["ETCD_ADDRS", "STATESVC_ADDR", "INFERX_BIND", "INFERX_CLUSTER_TOKEN"],
  },
  gateway: {
    kind: "Deployment",
    runService: "Gateway",
    port: 4000,
    env: ["STATESVC_ADDR", "SCHEDULER_ADDR", "GATEWAY_HOST", "INFERX_CLUSTER_TOKEN"],
  },
  nodeagent: {
    kind: "DaemonSet",
    runService: "NodeAgent",
    port: 1233,
    env: ["STATESVC_ADDR", "NODE_NAME", "NODE_ADDRESS", "INFERX_BIND", "INFERX_CLUSTER_TOKEN"],
  },
};

interface Container {
  name: string;
  image: string;
  env?: { name: string; value?: string }[];
  ports?: { containerPort: number }[];
  readinessProbe?: unknown;
  livenessProbe?: unknown;
  resources?: { requests?: unknown; limits?: unknown };
  securityContext?: { privileged?: boolean };
}

function workloads(objs: K8sObject[]) {
  return objs.filter((o) => ["Deployment", "StatefulSet", "DaemonSet"].includes(o.kind)).map((
    o,
  ) => ({
    o,
    spec: (o.spec as {
      template: { spec: { containers: Container[]; volumes?: { hostPath?: unknown }[] } };
    })
      .template.spec,
  }));
}

/**
 * Every variable the configuration reads (`src/common/config.ts`, read once at
 * start), and those the NVIDIA container toolkit reads to hand the node
 * agent the driver it discovers GPUs with.
 */
const configEnv = new Set([
  ...CONFIG_ENV,
  "NVIDIA_VISIBLE_DEVICES",
  "NVIDIA_DRIVER_CAPABILITIES",
]);

for (const overlay of OVERLAYS) {
  Deno.test(`k8s overlay ${overlay}: every object is valid against the Kubernetes schemas`, async () => {
    const objs = await renderKustomization(`${K8S}/overlays/${overlay}`);
    assert.ok(objs.length > 20);
    for (const o of objs) {
      const Model = MODELS[o.kind];
      assert.ok(Model, `no schema for ${o.kind}`);
      assert.doesNotThrow(() => new Model(o).validate(), `${o.kind} ${o.metadata.name}`);
      if (o.kind !== "Namespace" && o.kind !== "StorageClass") {
        assert.equal(o.metadata.namespace, "inferx");
      }
    }
  });

  Deno.test(`k8s overlay ${overlay}: one image per role with its RUN_SERVICE, port and address settings`, async () => {
    const objs = await renderKustomization(`${K8S}/overlays/${overlay}`);
    for (const [role, want] of Object.entries(ROLES)) {
      const w = workloads(objs).find((x) => x.o.metadata.name === role);
      assert.ok(w, `no ${role}`);
      assert.equal(w.o.kind, want.kind);
      const [c] = w.spec.containers;
      assert.match(c.image, new RegExp(`inferx-${role}:`), `${role} runs its own image`);
      const env = new Map((c.env ?? []).map((e) => [e.name, e.value]));
      assert.equal(env.get("RUN_SERVICE"), want.runService);
      assert.ok(
        c.ports?.some((p) => p.containerPort === want.port),
        `${role} listens on ${want.port}`,
      );
      for (const name of want.env) assert.ok(env.has(name), `${role} sets ${name}`);
    }
  });

  Deno.test(`k8s overlay ${overlay}: probes and resources everywhere, only the node agent on the host, nothing privileged`, async () => {
    const objs = await renderKustomization(`${K8S}/overlays/${overlay}`);
    for (const { o, spec } of workloads(objs)) {
      for (const c of spec.containers) {
        const what = `${o.metadata.name}/${c.name}`;
        assert.ok(c.readinessProbe && c.livenessProbe, `${what} has probes`);
        assert.ok(c.resources?.requests && c.resources?.limits, `${what} has requests and limits`);
        assert.notEqual(c.securityContext?.privileged, true, `${what} is not privileged`);
        for (const e of c.env ?? []) {
          if (o.metadata.name === "auditdb" || o.metadata.name === "etcd") continue;
          assert.ok(configEnv.has(e.name), `${what} sets ${e.name}, which nothing reads`);
        }
      }
      const hostPaths = (spec.volumes ?? []).filter((v) => v.hostPath);
      if (o.metadata.name !== "nodeagent") {
        assert.equal(hostPaths.length, 0, `${o.metadata.name} mounts no host path`);
      }
    }
  });

  Deno.test(`k8s overlay ${overlay}: only the gateway is reachable from outside the namespace, and the scheduler's metrics from the cluster`, async () => {
    const objs = await renderKustomization(`${K8S}/overlays/${overlay}`);
    const policies = objs.filter((o) => o.kind === "NetworkPolicy") as unknown as {
      spec: {
        podSelector: { matchLabels?: Record<string, string> };
        ingress: { from?: unknown[]; ports?: { port: number }[] }[];
      };
    }[];
    const all = policies.find((p) => !p.spec.podSelector.matchLabels);
    assert.ok(all, "a policy covers every pod");
    assert.ok(
      all.spec.ingress.every((r) => r.from?.length),
      "it only admits traffic from inside the namespace",
    );
    const open = policies.filter((p) => p.spec.ingress.some((r) => !r.from));
    assert.equal(open.length, 1);
    assert.equal(open[0].spec.podSelector.matchLabels?.["app.kubernetes.io/name"], "gateway");
    assert.deepEqual(open[0].spec.ingress[0].ports?.map((p) => p.port), [4000]);
    // Prometheus in a namespace of its own scrapes the scheduler's metrics port, only that.
    const metrics = policies.find((p) =>
      p.spec.podSelector.matchLabels?.["app.kubernetes.io/name"] === "scheduler"
    );
    assert.deepEqual(metrics?.spec.ingress.map((r) => [r.from, r.ports?.map((p) => p.port)]), [
      [[{ namespaceSelector: {} }], [1239]],
    ]);
  });

  const kubectl = (() => {
    try {
      return new Deno.Command("kubectl", {
        args: ["version", "--client"],
        stdout: "null",
        stderr: "null",
      }).outputSync()
        .success;
    } catch {
      return false;
    }
  })();
  Deno.test({
    name: `k8s overlay ${overlay}: the renderer agrees with kubectl kustomize`,
    ignore: !kubectl,
    fn: async () => {
      const out = new Deno.Command("kubectl", {
        args: ["kustomize", `${K8S}/overlays/${overlay}`],
        stdout: "piped",
      })
        .outputSync();
      const theirs = parseAllDocuments(new TextDecoder().decode(out.stdout)).map((d) =>
        d.toJS() as K8sObject
      );
      const key = (o: K8sObject) => `${o.kind}/${o.metadata.name}`;
      const ours = await renderKustomization(`${K8S}/overlays/${overlay}`);
      assert.deepEqual(
        Object.fromEntries(ours.map((o) => [key(o), o])),
        Object.fromEntries(theirs.map((o) => [key(o), o])),
      );
    },
  });
  if (!kubectl) {
    console.log(`skipping the kubectl cross-check of ${overlay}: kubectl is not installed`);
  }
}

Deno.test("k8s overlay eks: ALB ingress, gp3 volumes, IRSA roles, node agents on the GPU node group", async () => {
  const objs = await renderKustomization(`${K8S}/overlays/eks`);
  const find = (kind: string, name: string) =>
    objs.find((o) => o.kind === kind && o.metadata.name === name)!;
  const ingress = find("Ingress", "gateway") as unknown as { spec: { ingressClassName: string } };
  assert.equal(ingress.spec.ingressClassName, "alb");
  assert.equal(
    (find("StorageClass", "gp3") as unknown as { parameters: { type: string } }).parameters.type,
    "gp3",
  );
  for (const sts of ["etcd", "auditdb"]) {
    const claims = (find("StatefulSet", sts).spec as {
      volumeClaimTemplates: { spec: Record<string, unknown> }[];
    })
      .volumeClaimTemplates;
    assert.equal(claims[0].spec.storageClassName, "gp3");
    assert.ok(claims[0].spec.resources, "the patch kept the size");
  }
  for (const sa of ["inferx-nodeagent", "inferx-gateway"]) {
    const ann = find("ServiceAccount", sa).metadata.annotations as Record<string, string>;
    assert.match(ann["eks.amazonaws.com/role-arn"], /^arn:aws:iam::/);
  }
  const agent =
    (find("DaemonSet", "nodeagent").spec as { template: { spec: Record<string, unknown> } })
      .template.spec;
  assert.deepEqual(agent.nodeSelector, { "eks.amazonaws.com/nodegroup": "gpu" });
  assert.ok((agent.tolerations as { key: string }[]).some((t) => t.key === "nvidia.com/gpu"));
});

Deno.test("merge() merges containers and env by name, maps by key, and replaces other lists", () => {
  const base = {
    spec: {
      containers: [{ name: "a", image: "x", env: [{ name: "K", value: "1" }] }],
      tolerations: [{ key: "old" }],
      nodeSelector: { zone: "a" },
    },
  };
  const patch = {
    spec: {
      containers: [{ name: "a", env: [{ name: "L", value: "2" }] }, { name: "b", image: "y" }],
      tolerations: [{ key: "new" }],
      nodeSelector: { gpu: "true" },
    },
  };
  assert.deepEqual(merge(base, patch), {
    spec: {
      containers: [
        { name: "a", image: "x", env: [{ name: "K", value: "1" }, { name: "L", value: "2" }] },
        { name: "b", image: "y" },
      ],
      tolerations: [{ key: "new" }],
      nodeSelector: { zone: "a", gpu: "true" },
    },
  });
});
