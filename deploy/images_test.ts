/**
 * The images' settings agree wherever they are written down: the
 * `Dockerfile` (for users with a registry) against what `deno task images`
 * imports, the compose file against the images and the code, and the
 * Kubernetes manifests against both. Needs no Docker.
 */
import assert from "node:assert/strict";
import { parse } from "yaml";
import {
  APP_DIR,
  APP_SOURCES,
  dockerChanges,
  dockerIgnored,
  etcdImage,
  type ImageConfig,
  imageName,
  postgresImage,
  REPO,
  ROLE_OWNED_DIRS,
  roleImages,
  ROLES,
  VERSION,
} from "./images.ts";
import { renderKustomization } from "../k8s/render.ts";
import { CONFIG_ENV } from "../src/common/config.ts";
import { TORCH_WEIGHTS } from "../src/samples/torch/mod.ts";

/** One stage of a Dockerfile: where it starts and what it sets. */
interface Stage {
  from: string;
  copies: { from?: string; chown?: string; srcs: string[]; dest: string }[];
  runs: string[];
  config: ImageConfig;
}

/** Splits `a=b c="d e"` into pairs. */
function pairs(text: string): [string, string][] {
  return [...text.matchAll(/([\w.-]+)=("(?:[^"\\]|\\.)*"|\S*)/g)].map((m) => [
    m[1],
    m[2].startsWith('"') ? JSON.parse(m[2]) : m[2],
  ]);
}

/** Parses the instructions this repository's Dockerfile uses into its stages. */
function parseDockerfile(text: string): Map<string, Stage> {
  const args = new Map<string, string>();
  const stages = new Map<string, Stage>();
  let stage: Stage | undefined;
  const subst = (v: string) =>
    v.replace(/\$\{?(\w+)\}?/g, (_, k) => args.get(k) ?? assert.fail(`no ARG ${k}`));
  const lines = text.replace(/\\\n/g, " ").split("\n").map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"));
  for (const line of lines) {
    const [, op, rest] = line.match(/^(\w+)\s+(.*)$/)!;
    if (op === "ARG") {
      const [k, v] = rest.split("=");
      args.set(k, v ?? "");
      continue;
    }
    if (op === "FROM") {
      const [, image, name] = rest.match(/^(\S+)(?:\s+AS\s+(\S+))?$/i)!;
      const parent = stages.get(image);
      stage = parent ? structuredClone(parent) : {
        from: subst(image),
        copies: [],
        runs: [],
        config: { env: {}, entrypoint: [], user: "", expose: [], labels: {} },
      };
      if (parent) {
        stage.copies = [];
        stage.runs = [];
      }
      stages.set(name ?? image, stage);
      continue;
    }
    assert.ok(stage, `${op} before FROM`);
    const c = stage.config;
    if (op === "COPY") {
      const words = rest.split(/\s+/);
      const flags = Object.fromEntries(
        words.filter((w) => w.startsWith("--")).map((w) => w.slice(2).split("=")),
      );
      const paths = words.filter((w) => !w.startsWith("--"));
      stage.copies.push({
        from: flags.from,
        chown: flags.chown,
        srcs: paths.slice(0, -1),
        dest: paths.at(-1)!,
      });
    } else if (op === "RUN") stage.runs.push(rest);
    else if (op === "ENV") { for (const [k, v] of pairs(rest)) c.env[k] = subst(v); }
    else if (op === "LABEL") { for (const [k, v] of pairs(rest)) c.labels[k] = subst(v); }
    else if (op === "WORKDIR") c.workdir = rest;
    else if (op === "USER") c.user = rest;
    else if (op === "EXPOSE") c.expose = rest.split(/\s+/).map(Number);
    else if (op === "ENTRYPOINT") c.entrypoint = JSON.parse(rest);
    else if (op === "HEALTHCHECK") {
      const [, opts, cmd] = rest.match(/^(.*?)\s*CMD\s+(\[.*\])$/)!;
      const o = Object.fromEntries(pairs(opts.replace(/--/g, "")));
      c.healthcheck = {
        test: JSON.parse(cmd),
        interval: o.interval,
        timeout: o.timeout,
        startPeriod: o["start-period"],
        retries: Number(o.retries),
      };
    } else assert.fail(`unexpected ${op} in the Dockerfile`);
  }
  return stages;
}

const dockerfile = parseDockerfile(await Deno.readTextFile(`${REPO}/Dockerfile`));

Deno.test("the Dockerfile's role stages set what deno task images imports the images with", () => {
  // The Dockerfile labels revision from its REVISION argument (default "unknown").
  const want = roleImages({ revision: "unknown" });
  for (const [role, config] of Object.entries(want)) {
    const stage = dockerfile.get(role);
    assert.ok(stage, `a ${role} stage`);
    // Compare in the order Docker applies settings (env by name).
    const sortEnv = (c: ImageConfig) => ({
      ...c,
      env: Object.fromEntries(Object.entries(c.env).sort()),
    });
    assert.deepEqual(sortEnv(stage.config), sortEnv(config), role);
    assert.equal(stage.from, "scratch", `${role} has nothing from a base image`);
  }
  assert.deepEqual([...dockerfile.keys()].filter((k) => k in ROLES), Object.keys(ROLES));
});

Deno.test("the Dockerfile assembles the role filesystem with deploy/images.ts from the same sources", () => {
  const build = dockerfile.get("build")!;
  const local = build.copies.filter((c) => !c.from).flatMap((c) => c.srcs);
  assert.deepEqual(local.sort(), [...APP_SOURCES, "deploy"].sort());
  assert.ok(
    build.runs.some((r) => r.includes("deno run -A deploy/images.ts rootfs /rootfs")),
    "the build stage runs the same assembly as deno task images",
  );
  const base = dockerfile.get("base")!;
  assert.deepEqual(base.copies[0], {
    from: "build",
    chown: undefined,
    srcs: ["/rootfs/"],
    dest: "/",
  });
  for (const dir of ROLE_OWNED_DIRS) {
    assert.ok(
      base.copies.some((c) => c.dest === dir && c.chown === "65532:65532"),
      `${dir} belongs to the images' user`,
    );
  }
  assert.match(base.config.labels["org.opencontainers.image.version"], new RegExp(`^${VERSION}$`));
  assert.equal(roleImages().gateway.workdir, APP_DIR);
});

Deno.test(".dockerignore leaves tests and caches out of the images, never the sources", async () => {
  const ignored = await dockerIgnored();
  for (
    const p of [
      "src/store/etcd_test.ts",
      "src/ffi/testdata/",
      "src/samples/gpu/__pycache__/",
      "node_modules/",
    ]
  ) {
    assert.ok(ignored(p), p);
  }
  for (
    const p of [
      "src/store/etcd.ts",
      "main.ts",
      "deno.lock",
      "config/node.json",
      "src/common/testing.ts",
    ]
  ) {
    assert.ok(!ignored(p), p);
  }
});

Deno.test("what git ignores among the sources (generated files) stays out of the images", async () => {
  const ignored = await dockerIgnored();
  // The PyTorch sample's weights (43 MB) are made on first use, beside its worker.
  assert.ok(ignored(TORCH_WEIGHTS.slice(REPO.length + 1)), TORCH_WEIGHTS);
  const out = await new Deno.Command("git", {
    args: ["ls-files", "--others", "--ignored", "--exclude-standard", "--", ...APP_SOURCES],
    cwd: REPO,
    stdout: "piped",
    stderr: "null",
  }).output();
  const generated = new TextDecoder().decode(out.stdout).split("\n").filter((l) => l !== "");
  for (const p of generated) assert.ok(ignored(p), `${p} would go into the images`);
});

Deno.test("dockerChanges() writes every setting once and refuses values that need quoting", () => {
  const lines = dockerChanges(roleImages().gateway);
  assert.ok(lines.includes("ENV RUN_SERVICE=Gateway"));
  assert.ok(lines.includes("USER 65532:65532"));
  assert.ok(lines.includes("EXPOSE 4000"));
  assert.equal(lines.filter((l) => l.startsWith("HEALTHCHECK ")).length, 1);
  assert.equal(lines.at(-1), `ENTRYPOINT ${JSON.stringify(roleImages().gateway.entrypoint)}`);
  assert.deepEqual(dockerChanges(roleImages().nodeagent).filter((l) => l.startsWith("USER")), [
    "USER 0:0",
  ]);
  // Words are quoted; what would need escaping is refused.
  assert.ok(lines.includes('ENV INFERX_CTL_NAME="docker run --rm IMAGE ctl"'));
  for (const bad of ['say "hi"', "$HOME", "two  spaces", " lead"]) {
    assert.throws(
      () => dockerChanges({ ...etcdImage("3"), env: { A: bad } }),
      new RegExp(`Invalid A "${bad.replace("$", "\\$")}"`),
    );
  }
  assert.throws(() => dockerChanges({ ...etcdImage("3"), env: { "A B": "x" } }), /Invalid name/);
});

// ---- compose ----

/** `${NAME:-default}` and `${NAME}` filled from `vars`, else their defaults. */
function interpolate(text: string, vars: Record<string, string> = {}): string {
  return text.replace(/\$\{(\w+)(?::-([^}]*))?\}/g, (_, k, d) => vars[k] ?? d ?? "");
}

const composeText = await Deno.readTextFile(`${REPO}/deploy/compose.yaml`);
type Service = {
  image: string;
  network_mode?: string;
  read_only?: boolean;
  environment?: Record<string, string>;
  command?: string[];
  tmpfs?: string[];
  volumes?: string[];
};
const compose = parse(interpolate(composeText), { merge: true }) as {
  services: Record<string, Service>;
};
const ROLE_SERVICES: Record<string, keyof typeof ROLES> = {
  statesvc: "statesvc",
  scheduler1: "scheduler",
  scheduler2: "scheduler",
  gateway: "gateway",
  nodeagent: "nodeagent",
};

/** Every variable the configuration reads. */
const configEnv = new Set<string>(CONFIG_ENV);

Deno.test("compose: every service on the host network, every listener on 127.0.0.1, every port a variable", () => {
  const services = compose.services;
  assert.deepEqual(
    Object.keys(services).sort(),
    ["auditdb", "etcd", "gateway", "nodeagent", "scheduler1", "scheduler2", "statesvc"],
  );
  for (const [name, s] of Object.entries(services)) {
    assert.equal(s.network_mode, "host", name);
    const env = s.environment ?? {};
    if (name in ROLE_SERVICES && name !== "gateway") {
      assert.equal(env.INFERX_BIND, "127.0.0.1", name);
    }
    for (const [k, v] of Object.entries(env)) {
      if (/_ADDRS?$/.test(k)) {
        for (const addr of String(v).split(",")) {
          assert.match(addr, /(^|\/\/|@)127\.0\.0\.1:\d+/, k);
        }
      }
    }
  }
  assert.equal(services.gateway.environment!.GATEWAY_HOST, "127.0.0.1");
  assert.ok(services.auditdb.command!.includes("listen_addresses=127.0.0.1"));
  for (const flag of services.etcd.command!.filter((c) => c.includes("-urls="))) {
    assert.match(flag, /=http:\/\/127\.0\.0\.1:\d+$/, flag);
  }
  // Ports come from variables with the defaults of DESIGN.md.
  const ports = [...composeText.matchAll(/\$\{(\w*PORT\w*):-(\d+)\}/g)].map((m) => [m[1], m[2]]);
  const defaults = Object.fromEntries(ports);
  assert.equal(defaults.GATEWAY_PORT, "4000");
  assert.equal(defaults.STATESVC_PORT, "1237");
  assert.equal(defaults.SCHEDULER_PORT, "1238");
  assert.equal(defaults.ETCD_PORT, "2379");
  const settings = composeText.split("\n").filter((l) => !l.trim().startsWith("#")).join("\n");
  const literal = interpolate(settings, Object.fromEntries(ports.map(([k]) => [k, "PORT"])))
    .match(/127\.0\.0\.1:\d+/g);
  assert.equal(literal, null, "no address with a fixed port");
});

Deno.test("compose: each role runs its image read-only, the node agent with the Docker socket", () => {
  for (const [service, role] of Object.entries(ROLE_SERVICES)) {
    const s = compose.services[service];
    assert.equal(s.image, imageName(role), service);
    assert.equal(s.read_only, true, `${service} runs read-only as in k8s/`);
    for (const name of Object.keys(s.environment ?? {})) {
      assert.ok(configEnv.has(name), `${service} sets ${name}, which nothing reads`);
    }
  }
  assert.equal(compose.services.etcd.image, imageName("etcd"));
  assert.equal(compose.services.auditdb.image, imageName("postgres"));
  assert.ok(
    compose.services.nodeagent.volumes!.includes("/var/run/docker.sock:/var/run/docker.sock"),
  );
  assert.equal(roleImages().nodeagent.user, "0:0");
  for (const role of ["statesvc", "scheduler", "gateway"] as const) {
    assert.equal(roleImages()[role].user, "65532:65532", `${role} is not root`);
  }
});

// ---- Kubernetes ----

interface K8sContainer {
  name: string;
  image: string;
  command?: string[];
  env?: { name: string; value?: string }[];
  readinessProbe?: { exec?: { command: string[] } };
  securityContext?: { readOnlyRootFilesystem?: boolean };
  volumeMounts?: { mountPath: string; readOnly?: boolean }[];
}

const k8s = await renderKustomization(`${REPO}/k8s/base`);
function k8sContainer(name: string, objs = k8s): K8sContainer {
  const o = objs.find((x) => x.metadata.name === name && "template" in (x.spec as object))!;
  return (o.spec as { template: { spec: { containers: K8sContainer[] } } }).template.spec
    .containers[0];
}

Deno.test("k8s: each role runs the image deno task images tags, at this version", async () => {
  for (const role of Object.keys(ROLES)) {
    assert.equal(k8sContainer(role).image, imageName(role), role);
  }
  for (const overlay of ["onprem", "eks"]) {
    const objs = await renderKustomization(`${REPO}/k8s/overlays/${overlay}`);
    for (const role of Object.keys(ROLES)) {
      const image = k8sContainer(role, objs).image;
      assert.ok(image.endsWith(`/${imageName(role)}`), `${overlay}: ${image}`);
    }
  }
});

Deno.test("k8s: every path a role writes in compose (read-only root) is writable in k8s too", () => {
  for (const [service, role] of Object.entries(ROLE_SERVICES)) {
    const s = compose.services[service];
    const c = k8sContainer(role);
    assert.equal(c.securityContext?.readOnlyRootFilesystem, true, role);
    const writable = new Set(
      (c.volumeMounts ?? []).filter((m) => !m.readOnly).map((m) => m.mountPath),
    );
    const written = [
      ...(s.tmpfs ?? []),
      ...(s.volumes ?? []).map((v) => v.split(":")[1]),
    ].filter((p) => p !== "/var/run/docker.sock");
    for (const p of written) assert.ok(writable.has(p), `${role} writes ${p}: k8s must mount it`);
  }
});

Deno.test("k8s: the etcd and PostgreSQL images built here can stand in for the registry ones", async () => {
  assert.equal(k8sContainer("etcd").command![0], etcdImage("3").entrypoint[0]);
  const pg = k8sContainer("auditdb");
  const entry = await Deno.readTextFile(`${REPO}/deploy/postgres-entrypoint.sh`);
  for (const e of pg.env ?? []) assert.ok(entry.includes(e.name), `the entrypoint reads ${e.name}`);
  assert.equal(pg.readinessProbe?.exec?.command[0], "pg_isready");
  assert.match(postgresImage("15.1").env.PATH, /^\/usr\/lib\/postgresql\/15\/bin:/);
});
