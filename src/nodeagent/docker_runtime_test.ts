/**
 * The Docker runtime against a real Docker engine (the test command starts
 * `dockerd` and builds `inferx/ngram:latest`): container lifecycle, limits
 * in `docker inspect`, ports on 127.0.0.1 only, the paused tier keeping the
 * process and its state, the crash-at-start report, adoption after a
 * restart. Skipped, with the reason printed, where no engine answers.
 */
import assert from "node:assert/strict";
import { reset } from "@logtape/logtape";
// @ts-types="npm:@types/dockerode@^4"
import Docker from "dockerode";
import { InferxError } from "../common/errors.ts";
import {
  containerEnv,
  demuxLogs,
  dockerAvailable,
  DockerRuntime,
  dockerUnavailable,
  mountAccess,
  scopeTag,
  WORKER_BRIDGE,
  WORKER_NETWORK,
} from "./docker_runtime.ts";
import { gpuId, platformEnv, type PodSpec } from "./runtime.ts";
import type { NodeInfo } from "../model/cluster.ts";
import { imageExists, NGRAM_COMMANDS, NGRAM_IMAGE } from "../samples/ngram/image.ts";
import * as nodeagent from "./mod.ts";
import { StateService } from "../statesvc/service.ts";
import { openSqliteStore } from "../store/sqlite.ts";
import { logLines, nodeListener, until } from "../common/testing.ts";

const reason = !(await dockerAvailable())
  ? "no Docker engine answers on /var/run/docker.sock"
  : !(await imageExists(NGRAM_IMAGE))
  ? `image ${NGRAM_IMAGE} is missing (deno task image builds it)`
  : undefined;
if (reason) console.log(`skipping the Docker runtime tests: ${reason}`);

const docker = new Docker({ socketPath: "/var/run/docker.sock" });
/** The container of pod `pod` of an agent of `scope`. */
const nameOf = (scope: string, pod: string) => `inferx-${scopeTag(scope)}-${pod}`;

function spec(podId: string, commands = NGRAM_COMMANDS): PodSpec {
  return {
    podId,
    func: "t/n/lm",
    funcVersion: 2,
    template: {
      image: NGRAM_IMAGE,
      commands,
      envs: [["MODEL_NAME", "lm-in-docker"]],
      mounts: [],
      port: 8000,
      probe: "/health",
      startupTimeoutS: 30,
    },
    cpuMillis: 500,
    memMB: 256,
    gpus: [],
  };
}

/** A node of 2 CPUs and 2 GB on the Docker runtime, as an agent registers it. */
const dockerNode = (name: string): NodeInfo => ({
  name,
  address: "127.0.0.1",
  cpuMillis: 2000,
  memMB: 2048,
  gpus: [],
  contextOverheadMB: 0,
  standbyTiers: [],
  runtime: "docker",
  ready: true,
  heartbeat: 0,
});

const complete = async (endpoint: string) => {
  const res = await fetch(`http://${endpoint}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt: "The GPU", max_tokens: 4 }),
  });
  const body = await res.json();
  return { body, requests: res.headers.get("x-worker-requests") };
};

const t = (name: string, fn: () => Promise<void>) =>
  Deno.test({
    name,
    ignore: reason !== undefined,
    sanitizeOps: false,
    sanitizeResources: false,
    fn,
  });

t(
  "DockerRuntime runs a pod as a container with its limits (CPU, memory, processes, output), labels and a port on 127.0.0.1 only",
  async () => {
    const scope = `test-${crypto.randomUUID()}`;
    const rt = new DockerRuntime({ scope });
    const pod = await rt.start(spec("pod-life"));
    try {
      assert.match(pod.endpoint, /^127\.0\.0\.1:\d+$/);
      const { body } = await complete(pod.endpoint);
      assert.equal(body.model, "lm-in-docker");
      const info = await docker.getContainer(nameOf(scope, "pod-life")).inspect();
      assert.equal(info.HostConfig.NanoCpus, 500_000_000);
      assert.equal(info.HostConfig.Memory, 256 * 1024 * 1024);
      // No swap beyond the limit, no raw sockets (ARP for another worker's address), no device
      // nodes, and nothing gained through a setuid program.
      assert.equal(info.HostConfig.MemorySwap, 256 * 1024 * 1024);
      assert.deepEqual(info.HostConfig.CapDrop, ["NET_RAW", "MKNOD"]);
      assert.deepEqual(info.HostConfig.SecurityOpt, ["no-new-privileges:true"]);
      // Bounded processes and output: a fork bomb or a chatty worker takes nothing from others.
      assert.equal(info.HostConfig.PidsLimit, 4096);
      assert.deepEqual(info.HostConfig.LogConfig, {
        Type: "json-file",
        Config: { "max-size": "8m", "max-file": "2" },
      });
      const bindings = Object.values(info.HostConfig.PortBindings ?? {}).flat() as {
        HostIp: string;
      }[];
      assert.ok(
        bindings.length > 0 && bindings.every((b) => b.HostIp === "127.0.0.1"),
        JSON.stringify(bindings),
      );
      assert.deepEqual(
        [
          info.Config.Labels["inferx.scope"],
          info.Config.Labels["inferx.pod"],
          info.Config.Labels["inferx.version"],
        ],
        [scope, "pod-life", "2"],
      );
      assert.ok(info.Config.Env.includes("INFERX_FUNCTION=t/n/lm"));
      assert.match(await rt.logs("pod-life"), /ngram model \(order 7/);
    } finally {
      await rt.stop("pod-life");
    }
    await assert.rejects(
      docker.getContainer(nameOf(scope, "pod-life")).inspect(),
      "stop removes the container",
    );
  },
);

t(
  "DockerRuntime parks a pod with the cgroup freezer and resumes the same process, state kept",
  async () => {
    const scope = `test-${crypto.randomUUID()}`;
    const rt = new DockerRuntime({ scope });
    const pod = await rt.start(spec("pod-pause"));
    try {
      assert.equal((await complete(pod.endpoint)).requests, "1");
      await rt.park("pod-pause", "paused");
      assert.equal(await rt.isPaused("pod-pause"), true);
      await assert.rejects(
        fetch(`http://${pod.endpoint}/health`, { signal: AbortSignal.timeout(300) }),
      );
      await rt.resume("pod-pause");
      assert.equal(
        (await complete(pod.endpoint)).requests,
        "2",
        "the same process served the next call",
      );
      // Unpaused from outside while parked: the resume finds it running.
      await rt.park("pod-pause", "paused");
      await docker.getContainer(nameOf(scope, "pod-pause")).unpause();
      await rt.resume("pod-pause");
      assert.equal((await complete(pod.endpoint)).requests, "3");
      await assert.rejects(rt.park("pod-pause", "host_memory"), /offers paused only/);
    } finally {
      await rt.stop("pod-pause");
    }
  },
);

t(
  "DockerRuntime makes the workers' network again when the engine lost it (docker network prune)",
  async () => {
    const rt = new DockerRuntime({ scope: `test-${crypto.randomUUID()}` });
    const first = await rt.start(spec("pod-net-1"));
    await rt.stop("pod-net-1");
    // Pruned while no worker runs (other tests' workers may be on it: then it stays).
    const removed = await docker.getNetwork(WORKER_NETWORK).remove().then(() => true, () => false);
    const pod = await rt.start(spec("pod-net-2"));
    try {
      assert.ok(first.endpoint);
      assert.equal((await complete(pod.endpoint)).requests, "1");
      if (!removed) {
        console.log(
          "the workers' network was in use: not removed, only the start checked",
        );
      }
    } finally {
      await rt.stop("pod-net-2");
    }
  },
);

t(
  "DockerRuntime fences the workers' bridge by its name, or by the engine's name for a network an earlier release made",
  async () => {
    const fenced: string[] = [];
    const fence = (name: string) => (fenced.push(name), Promise.resolve([]));
    // Made by an earlier release: no name of its own for its bridge (pruned first while no
    // worker runs; other tests' workers may be on it: then only the named case is checked).
    const old = await docker.getNetwork(WORKER_NETWORK).remove().then(() => true, () => false);
    let oldId: string | undefined;
    if (old) {
      const made = await docker.createNetwork({
        Name: WORKER_NETWORK,
        Driver: "bridge",
        Options: { "com.docker.network.bridge.enable_icc": "false" },
      });
      oldId = made.id;
    }
    const rt = new DockerRuntime({ scope: `test-${crypto.randomUUID()}`, fence });
    await rt.start(spec("pod-fenced"));
    await rt.stop("pod-fenced");
    if (oldId) {
      assert.deepEqual(fenced, [`br-${oldId.slice(0, 12)}`]);
      // Made again by this release: its bridge named, so that one rule holds for it for good.
      await docker.getNetwork(WORKER_NETWORK).remove().catch(() => {});
      const again = new DockerRuntime({ scope: `test-${crypto.randomUUID()}`, fence });
      await again.start(spec("pod-fenced-2"));
      await again.stop("pod-fenced-2");
      assert.deepEqual(fenced.at(-1), WORKER_BRIDGE);
    } else {
      console.log("the workers' network was in use: only its bridge's fence checked");
      assert.equal(fenced.length, 1);
    }
  },
);

t(
  "a Docker worker cannot open a connection to the node (a listener on 0.0.0.0 through its bridge's gateway)",
  async () => {
    const rt = new DockerRuntime({ scope: `test-${crypto.randomUUID()}` });
    const node = nodeListener();
    // The worker tries the node at its default route's gateway (the bridge's address), then
    // serves what it saw.
    const probe = [
      "deno",
      "eval",
      String
        .raw`const f = Deno.readTextFileSync("/proc/net/route").split("\n").map((l) => l.trim().split(/\s+/))
        .find((x) => x[1] === "00000000");
      const gw = [6, 4, 2, 0].map((i) => parseInt(f[2].slice(i, i + 2), 16)).join(".");
      let seen;
      try {
        const c = await Promise.race([
          Deno.connect({ hostname: gw, port: Number(Deno.env.get("TARGET")) }),
          new Promise((_, no) => setTimeout(() => no(new Error("timed out")), 3000)),
        ]);
        c.close();
        seen = "connected to " + gw;
      } catch (e) {
        seen = e.name + " at " + gw + ": " + e.message;
      }
      Deno.serve({ hostname: "0.0.0.0", port: Number(Deno.env.get("PORT")) }, () => new Response(seen));`,
    ];
    const s = spec("pod-fence", probe);
    s.template.envs = [["TARGET", String(node.port)]];
    const pod = await rt.start(s);
    try {
      const seen = await (await fetch(`http://${pod.endpoint}/health`)).text();
      assert.match(seen, /^ConnectionRefused at \d+\.\d+\.\d+\.\d+:/, seen);
      assert.equal(node.accepted(), 0);
    } finally {
      await rt.stop("pod-fence");
      node.listener.close();
    }
  },
);

t("DockerRuntime reports a worker that crashes at start with the tail of its output", async () => {
  const scope = `test-${crypto.randomUUID()}`;
  const rt = new DockerRuntime({ scope });
  // One line of 1 MB first: the tail given stays within 64 KiB, its end kept.
  const crash = [
    "deno",
    "eval",
    "console.error('x'.repeat(1e6)); console.error('cannot open weights.bin'); Deno.exit(3)",
  ];
  await assert.rejects(rt.start(spec("pod-crash", crash)), (err: unknown) => {
    assert.ok(err instanceof InferxError && err.code === "worker_failed");
    assert.match(err.message, /exit code 3/);
    assert.match(err.message, /cannot open weights\.bin/);
    assert.ok(err.message.length < 70_000, `${err.message.length} characters`);
    return true;
  });
  await assert.rejects(
    docker.getContainer(nameOf(scope, "pod-crash")).inspect(),
    "the failed container is removed",
  );
  await assert.rejects(
    rt.start({
      ...spec("pod-noimage"),
      template: { ...spec("x").template, image: "inferx/missing:1" },
    }),
    /Cannot create the container of pod pod-noimage from image inferx\/missing:1/,
  );
});

t(
  "a restarted DockerRuntime adopts running containers of its scope and removes stopped ones",
  async () => {
    const scope = `test-${crypto.randomUUID()}`;
    const first = new DockerRuntime({ scope });
    const pod = await first.start(spec("pod-adopt"));
    const dead = await docker.createContainer({
      name: `inferx-pod-dead-${scope.slice(5, 13)}`,
      Image: NGRAM_IMAGE,
      Labels: { "inferx.scope": scope, "inferx.pod": "pod-dead" },
    });
    const again = new DockerRuntime({ scope });
    try {
      const { adopted, removed } = await again.recover();
      assert.deepEqual(adopted, [{ podId: "pod-adopt", endpoint: pod.endpoint, paused: false }]);
      assert.equal(removed, 1);
      await assert.rejects(dead.inspect(), "the stopped container was removed");
      assert.equal((await complete(pod.endpoint)).requests, "1");
      assert.match(await again.logs("pod-adopt"), /ngram model/);
    } finally {
      await again.stop("pod-adopt");
    }
  },
);

/**
 * A unix socket in front of the engine's that can stop answering (each
 * connection closed at once, those open cut), as an engine restarting does.
 */
function engineProxy() {
  const path = `${Deno.makeTempDirSync({ prefix: "inferx-engine-" })}/docker.sock`;
  const listener = Deno.listen({ transport: "unix", path });
  const open = new Set<Deno.Conn>();
  let answering = true;
  /** New connections taken and held, never answered (a stopped engine). */
  let silent = false;
  // Bytes that arrive while silent are dropped, on connections already open too: an engine
  // under SIGSTOP answers nothing on any of them.
  const pipe = (from: Deno.Conn, to: Deno.Conn) =>
    (async () => {
      const w = to.writable.getWriter();
      for await (const chunk of from.readable) if (!silent) await w.write(chunk);
    })().catch(() => {}).finally(() => {
      for (const c of [from, to]) {
        open.delete(c);
        try {
          c.close();
        } catch {
          // closed by the other direction
        }
      }
    });
  (async () => {
    for await (const conn of listener) {
      if (!answering) {
        conn.close();
        continue;
      }
      if (silent) {
        open.add(conn);
        continue;
      }
      const engine = await Deno.connect({ transport: "unix", path: "/var/run/docker.sock" });
      open.add(conn).add(engine);
      pipe(conn, engine);
      pipe(engine, conn);
    }
  })().catch(() => {});
  return {
    path,
    set silent(on: boolean) {
      silent = on;
    },
    set answering(on: boolean) {
      answering = on;
      if (!on) {
        for (const c of open) {
          try {
            c.close();
          } catch {
            // closed already
          }
        }
        open.clear();
      }
    },
    close() {
      listener.close();
      Deno.removeSync(path.slice(0, path.lastIndexOf("/")), { recursive: true });
    },
  };
}

t(
  "a container the engine could not remove while it did not answer is removed by a later sweep",
  async () => {
    const scope = `test-${crypto.randomUUID()}`;
    const proxy = engineProxy();
    const rt = new DockerRuntime({ scope, socketPath: proxy.path });
    const lines = await logLines();
    try {
      await rt.start(spec("pod-left"));
      proxy.answering = false;
      await rt.stop("pod-left", 1000);
      // Before, the container ran on unowned until the agent restarted.
      const left = await docker.getContainer(nameOf(scope, "pod-left")).inspect();
      assert.equal(left.State.Running, true);
      assert.ok(
        lines.some((l) => /Cannot remove the container of pod pod-left/.test(l)),
        lines.join("\n"),
      );
      await rt.sweep(); // the engine still not answering: kept for the next sweep
      proxy.answering = true;
      await rt.sweep();
      await assert.rejects(
        docker.getContainer(nameOf(scope, "pod-left")).inspect(),
        /404|no such/i,
      );
      assert.ok(lines.some((l) => /Removed the container pod pod-left left/.test(l)));
    } finally {
      await reset();
      proxy.close();
      await docker.getContainer(nameOf(scope, "pod-left")).remove({ force: true }).catch(() => {});
    }
  },
);

t(
  "a container that stopped while the engine's connection was cut is found ended by a later sweep",
  async () => {
    const scope = `test-${crypto.randomUUID()}`;
    const proxy = engineProxy();
    const exits: string[] = [];
    const rt = new DockerRuntime({
      scope,
      socketPath: proxy.path,
      onExit: (pod, why) => exits.push(`${pod}: ${why}`),
    });
    try {
      await rt.start(spec("pod-cut"));
      // The engine dies: its connections are cut, the wait on the container with them (its
      // answer's head had come: the library's promise never ends), and, started again, it
      // has stopped the container.
      proxy.answering = false;
      await docker.getContainer(nameOf(scope, "pod-cut")).stop({ t: 0 });
      await new Promise((r) => setTimeout(r, 500));
      assert.deepEqual(exits, [], "the cut wait told nothing");
      proxy.answering = true;
      await rt.sweep(); // a heartbeat's
      await until("its exit told", () => exits.length === 1, 5000);
      assert.match(exits[0], /^pod-cut: exit code \d+/);
      await assert.rejects(
        docker.getContainer(nameOf(scope, "pod-cut")).inspect(),
        /404|no such/i,
        "its container removed",
      );
    } finally {
      proxy.close();
      await docker.getContainer(nameOf(scope, "pod-cut")).remove({ force: true }).catch(() => {});
    }
  },
);

t(
  "a pod still starting whose container stopped while the engine's connection was cut fails at the next sweep",
  async () => {
    const scope = `test-${crypto.randomUUID()}`;
    const proxy = engineProxy();
    const rt = new DockerRuntime({ scope, socketPath: proxy.path });
    try {
      // A worker that never answers its probe: its start waits up to its startup_timeout (30 s).
      const starting = rt.start(spec("pod-slow", ["deno", "eval", "setInterval(() => {}, 1000)"]))
        .then(() => "started", (e: Error) => e.message);
      for (let i = 0; i < 100; i++) {
        const [c] = await docker.listContainers({ filters: { label: [`inferx.scope=${scope}`] } });
        if (c?.State === "running") break;
        await new Promise((r) => setTimeout(r, 100));
      }
      // The engine dies with the start's wait open, and, started again, has stopped it.
      proxy.answering = false;
      await docker.getContainer(nameOf(scope, "pod-slow")).stop({ t: 0 });
      proxy.answering = true;
      const t0 = performance.now();
      await rt.sweep(); // a heartbeat's
      const why = await starting;
      assert.match(why, /^worker exited before it was ready \(exit code \d+/);
      assert.ok(performance.now() - t0 < 10_000, "not its startup_timeout");
    } finally {
      proxy.close();
      await docker.getContainer(nameOf(scope, "pod-slow")).remove({ force: true }).catch(() => {});
    }
  },
);

t(
  "a stop while the engine takes connections and answers nothing ends, keeping the container for later",
  async () => {
    const scope = `test-${crypto.randomUUID()}`;
    const proxy = engineProxy();
    const rt = new DockerRuntime({ scope, socketPath: proxy.path, answerMs: 300 });
    try {
      await rt.start(spec("pod-frozen"));
      proxy.silent = true; // as an engine under SIGSTOP
      // Raced with a deadline: without the silence limit the stop would wait for ever.
      let timer: ReturnType<typeof setTimeout> | undefined;
      const stopped = await Promise.race([
        rt.stop("pod-frozen", 1000).then(() => true),
        new Promise<false>((r) => timer = setTimeout(() => r(false), 8000)),
      ]);
      clearTimeout(timer);
      assert.ok(stopped, "the stop ended within 8 s (1 s of grace, 0.3 s a call)");
      // Answering again: the sweep removes what the stop could not.
      proxy.silent = false;
      await rt.sweep();
      await assert.rejects(
        docker.getContainer(nameOf(scope, "pod-frozen")).inspect(),
        /404|no such/i,
      );
    } finally {
      proxy.close();
      await docker.getContainer(nameOf(scope, "pod-frozen")).remove({ force: true }).catch(
        () => {},
      );
    }
  },
);

t(
  "a restarted DockerRuntime does not take a container that never answered its probe for ready",
  async () => {
    const scope = `test-${crypto.randomUUID()}`;
    const first = new DockerRuntime({ scope });
    // A worker still starting (or hung) when its agent went: it never answers /health.
    const hung = spec("pod-hung", ["deno", "eval", "setInterval(() => {}, 1000)"]);
    const starting = first.start(hung).catch((e) => e);
    for (let i = 0; i < 50; i++) {
      const [c] = await docker.listContainers({ filters: { label: [`inferx.scope=${scope}`] } });
      if (c?.State === "running") break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const again = new DockerRuntime({ scope });
    const { adopted, removed } = await again.recover();
    // Before, it was adopted and its pod reported Ready at an endpoint that answered nothing.
    assert.deepEqual([adopted, removed], [[], 1]);
    const left = await docker.listContainers({
      all: true,
      filters: { label: [`inferx.scope=${scope}`] },
    });
    assert.deepEqual(left, []);
    await starting;
  },
);

t(
  "a node agent on Docker removes a running container of its scope that no pod record claims",
  async () => {
    const scope = `test-${crypto.randomUUID()}`;
    const leftover = new DockerRuntime({ scope });
    await leftover.start(spec("pod-orphan"));
    const store = await openSqliteStore();
    const handle = await nodeagent.start({
      meta: new StateService(store),
      node: dockerNode("n1"),
      scope,
    });
    try {
      assert.equal(handle.runtime, "docker");
      const deadline = Date.now() + 15_000;
      while (true) {
        const gone = await docker.getContainer(nameOf(scope, "pod-orphan")).inspect().then(
          () => false,
          () => true,
        );
        if (gone) break;
        assert.ok(Date.now() < deadline, "the orphan container was not removed");
        await new Promise((r) => setTimeout(r, 100));
      }
    } finally {
      await handle.stop();
      await store.close();
    }
  },
);

t(
  "DockerRuntime binds an allowed directory read-only and one allowed :rw read-write, as mounts whose paths carry no options",
  async () => {
    const scope = `test-${crypto.randomUUID()}`;
    const models = await Deno.makeTempDir({ prefix: "inferx-models-" });
    const scratch = await Deno.makeTempDir({ prefix: "inferx-scratch-" });
    const rt = new DockerRuntime({
      scope,
      mountAllow: [{ dir: models, rw: false }, { dir: scratch, rw: true }],
    });
    const s = spec("pod-mounts");
    s.template = {
      ...s.template,
      mounts: [
        { hostpath: models, mountpath: "/models:z", readonly: true },
        // Asked read-write (a mount's default) in a directory allowed read-only.
        { hostpath: `${models}/llama`, mountpath: "/llama", readonly: false },
        { hostpath: scratch, mountpath: "/scratch", readonly: false },
      ],
    };
    await Deno.mkdir(`${models}/llama`);
    try {
      await rt.start(s);
      const info = await docker.getContainer(nameOf(scope, "pod-mounts")).inspect();
      const mounts = (info.Mounts as { Source: string; Destination: string; RW: boolean }[])
        .map((m) => [m.Source, m.Destination, m.RW]);
      assert.deepEqual(
        mounts.sort(),
        [
          [await Deno.realPath(models), "/models:z", false],
          [await Deno.realPath(`${models}/llama`), "/llama", false],
          [await Deno.realPath(scratch), "/scratch", true],
        ].sort(),
      );
      assert.deepEqual(info.HostConfig.Binds ?? [], [], "no host:container text");
    } finally {
      await rt.stop("pod-mounts");
      await Deno.remove(models, { recursive: true });
      await Deno.remove(scratch, { recursive: true });
    }
  },
);

Deno.test("DockerRuntime binds only host directories the operator allows (INFERX_MOUNT_ALLOW)", async () => {
  const models = [{ dir: "/models", rw: false }];
  assert.deepEqual(mountAccess("/models/llama", true, models), { readonly: true });
  assert.deepEqual(mountAccess("/models", true, models), { readonly: true });
  // Asked read-write (a mount's default) in a read-only directory: bound read-only.
  assert.deepEqual(mountAccess("/models/llama", false, models), { readonly: true });
  assert.deepEqual(mountAccess("/modelsx", true, models), {
    refusal: "not in an allowed directory",
  });
  assert.ok("refusal" in mountAccess("/var/run/docker.sock", true, []));
  // A directory workers may write in binds whole, never a path under it (a worker that
  // writes there could swap a part of that path for a link between the check and the bind),
  // also through a read-only directory above it.
  const scratch = [{ dir: "/data", rw: false }, { dir: "/data/scratch", rw: true }];
  assert.deepEqual(mountAccess("/data/scratch", false, scratch), { readonly: false });
  assert.deepEqual(mountAccess("/data/scratch", true, scratch), { readonly: true });
  const evil = mountAccess("/data/scratch/evil", true, scratch);
  assert.match("refusal" in evil ? evil.refusal : "", /workers may write in/);
  assert.deepEqual(mountAccess("/data/models", false, scratch), { readonly: true });
  // Refused before any container is made: no engine needed.
  const rt = new DockerRuntime({ mountAllow: models, socketPath: "/nonexistent.sock" });
  for (const hostpath of ["/", "/var/run/docker.sock", "/models/../etc"]) {
    const s = spec("pod-mount");
    s.template = { ...s.template, mounts: [{ hostpath, mountpath: "/m", readonly: true }] };
    await assert.rejects(
      rt.start(s),
      (e: InferxError) => e.code === "forbidden" && /is not allowed on this node/.test(e.message),
      hostpath,
    );
  }
});

Deno.test("DockerRuntime follows symbolic links in a mount before it allows it", async () => {
  const allowed = await Deno.makeTempDir({ prefix: "inferx-allowed-" });
  try {
    await Deno.symlink("/etc", `${allowed}/escape`);
    await Deno.mkdir(`${allowed}/models`);
    // Refused before any container is made: no engine needed.
    const rt = new DockerRuntime({
      mountAllow: [{ dir: allowed, rw: false }],
      socketPath: "/nonexistent.sock",
    });
    const start = (hostpath: string) => {
      const s = spec("pod-mount");
      s.template = { ...s.template, mounts: [{ hostpath, mountpath: "/m", readonly: true }] };
      return rt.start(s);
    };
    // Before, the link passed the check and the container had the host's /etc.
    await assert.rejects(
      start(`${allowed}/escape`),
      (e: InferxError) => e.code === "forbidden" && /it leads to \/etc/.test(e.message),
    );
    await assert.rejects(
      start(`${allowed}/missing`),
      (e: InferxError) => e.code === "forbidden" && /it does not exist/.test(e.message),
    );
    // A real directory in it passes the check (and fails at the missing engine).
    await assert.rejects(start(`${allowed}/models`), (e: InferxError) => e.code !== "forbidden");
  } finally {
    await Deno.remove(allowed, { recursive: true });
  }
});

Deno.test("demuxLogs() keeps a character that Docker's 16 KiB frames cut in two", () => {
  const frame = (stream: number, bytes: Uint8Array) => {
    const head = new Uint8Array(8);
    head[0] = stream;
    new DataView(head.buffer).setUint32(4, bytes.length);
    return [...head, ...bytes];
  };
  const line = new TextEncoder().encode(`${"a".repeat(16383)}é b\n`); // é: 2 bytes at 16383
  const err = new TextEncoder().encode("warn\n");
  const logs = new Uint8Array([
    ...frame(1, line.subarray(0, 16384)),
    ...frame(2, err),
    ...frame(1, line.subarray(16384)),
  ]);
  // Before, each frame was decoded alone: two replacement characters instead of é.
  assert.equal(demuxLogs(logs), `${"a".repeat(16383)}warn\né b\n`);
});

Deno.test("a container's CUDA devices are numbered as the container sees them, from 0", () => {
  const s = spec("pod-gpu");
  s.gpus = [{ index: 2, vramMB: 1000 }, { index: 5, vramMB: 1000 }];
  const env = containerEnv(s);
  // The engine exposes host GPUs 2 and 5 alone, as 0 and 1: "2,5" made CUDA find none.
  assert.equal(env.CUDA_VISIBLE_DEVICES, "0,1");
  assert.equal(env.NVIDIA_VISIBLE_DEVICES, "2,5");
  assert.equal(env.MODEL_NAME, "lm-in-docker");
  assert.equal(containerEnv(spec("pod-cpu")).NVIDIA_VISIBLE_DEVICES, "none");
});

Deno.test("an agent that sees some of the host's GPUs gives workers the host's names for them", () => {
  // Started with CUDA_VISIBLE_DEVICES=2,3 its driver numbers them 0 and 1.
  const env = { CUDA_VISIBLE_DEVICES: "2, 3" };
  assert.deepEqual([gpuId(0, false, env), gpuId(1, false, env)], ["2", "3"]);
  assert.equal(gpuId(0, false, {}), "0", "sees all: the same numbers");
  assert.equal(gpuId(0, false, { CUDA_VISIBLE_DEVICES: "GPU-8f2e" }), "GPU-8f2e", "a UUID kept");
  // In a container given host GPUs 4 and 6: a worker beside it names them as the agent does,
  // the host's engine as the host does.
  const inContainer = { NVIDIA_VISIBLE_DEVICES: "4,6", CUDA_VISIBLE_DEVICES: "1" };
  assert.equal(gpuId(0, false, inContainer), "1");
  assert.equal(gpuId(0, true, inContainer), "6");
  assert.equal(gpuId(1, true, { NVIDIA_VISIBLE_DEVICES: "all" }), "1");
  // The process runtime's workers get the agent's view through the platform's variables.
  const saved = Deno.env.get("CUDA_VISIBLE_DEVICES");
  Deno.env.set("CUDA_VISIBLE_DEVICES", "2,3");
  try {
    const s = spec("pod-gpu");
    s.gpus = [{ index: 1, vramMB: 1000 }];
    assert.equal(platformEnv(s).CUDA_VISIBLE_DEVICES, "3");
  } finally {
    if (saved === undefined) Deno.env.delete("CUDA_VISIBLE_DEVICES");
    else Deno.env.set("CUDA_VISIBLE_DEVICES", saved);
  }
});

t("agents of two scopes on one engine run pods of the same id side by side", async () => {
  const a = new DockerRuntime({ scope: `test-${crypto.randomUUID()}` });
  const b = new DockerRuntime({ scope: `test-${crypto.randomUUID()}` });
  const s = spec("pod-same-id");
  const first = await a.start(s);
  try {
    // Before, the second start failed: the container name was taken.
    const second = await b.start(s);
    assert.notEqual(first.endpoint, second.endpoint);
    await b.stop("pod-same-id");
  } finally {
    await a.stop("pod-same-id");
  }
});

t(
  "workers reach each other only through their published ports, and stop at once without a SIGTERM handler",
  async () => {
    const a = new DockerRuntime({ scope: `test-${crypto.randomUUID()}` });
    const b = new DockerRuntime({ scope: `test-${crypto.randomUUID()}` });
    // No SIGTERM handler: as the container's first process it would ignore the signal.
    const bare = [
      "deno",
      "eval",
      "Deno.serve({ port: 8000, hostname: '0.0.0.0', onListen() {} }, () => new Response('ok'))",
    ];
    await a.start({
      ...spec("pod-a", bare),
      template: { ...spec("x").template, commands: bare, probe: "/" },
    });
    const pb = await b.start({
      ...spec("pod-b", bare),
      template: { ...spec("x").template, commands: bare, probe: "/" },
    });
    try {
      const ca = (await docker.listContainers({ filters: { label: ["inferx.pod=pod-a"] } }))[0];
      const cb = await docker.getContainer(
        (await docker.listContainers({ filters: { label: ["inferx.pod=pod-b"] } }))[0].Id,
      ).inspect();
      const ipB = cb.NetworkSettings.Networks[WORKER_NETWORK].IPAddress;
      assert.ok(ipB, "on the workers' network");
      const probe = await new Deno.Command("docker", {
        args: [
          "exec",
          ca.Id,
          "deno",
          "eval",
          `await fetch("http://${ipB}:8000/", { signal: AbortSignal.timeout(2000) }).then(() => console.log("reached"), () => console.log("refused"))`,
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.equal(new TextDecoder().decode(probe.stdout).trim(), "refused");
      assert.equal(await (await fetch(`http://${pb.endpoint}/`)).text(), "ok", "its port answers");
      const t0 = performance.now();
      await a.stop("pod-a", 5000);
      assert.ok(
        performance.now() - t0 < 2500,
        `stopped in ${Math.round(performance.now() - t0)} ms`,
      );
    } finally {
      await a.stop("pod-a");
      await b.stop("pod-b");
    }
  },
);

t("a worker stopped after a process of it was killed by its memory limit says so", async () => {
  const lines = await logLines();
  // Serves on 8000; /spawn starts a process that takes 300 MB and answers how it ended.
  const spawner = `Deno.serve({ port: 8000, hostname: "0.0.0.0", onListen() {} }, async (req) => {
    if (new URL(req.url).pathname !== "/spawn") return new Response("up");
    const hog = "const h = []; for (let i = 0; i < 300; i++) h.push(new Uint8Array(1 << 20).fill(1));";
    const st = await new Deno.Command(Deno.execPath(), { args: ["eval", hog] }).output();
    return new Response(String(st.signal ?? st.code));
  });`;
  const rt = new DockerRuntime({ scope: `test-${crypto.randomUUID()}` });
  try {
    const pod = await rt.start({ ...spec("pod-spawn", ["deno", "eval", spawner]), memMB: 128 });
    assert.equal(await (await fetch(`http://${pod.endpoint}/spawn`)).text(), "SIGKILL");
    await rt.stop("pod-spawn");
    assert.ok(
      lines.some((l) =>
        /^Pod pod-spawn: killed by its memory limit \(128 MB; resources\.Mem\)/.test(l)
      ),
      lines.join("\n"),
    );
  } finally {
    await reset();
  }
});

t("a worker that ends early, or past its memory limit, is told as such", async () => {
  const rt = new DockerRuntime({ scope: `test-${crypto.randomUUID()}` });
  for (let i = 0; i < 3; i++) {
    await assert.rejects(rt.start(spec(`pod-quick-${i}`, ["deno", "--version"])), (err: Error) => {
      assert.match(err.message, /worker exited before it was ready \(exit code 0\)/);
      assert.doesNotMatch(err.message, /publishes no/);
      return true;
    });
  }
  const hog = ["deno", "eval", "const a = []; for (;;) a.push(new Uint8Array(1 << 20).fill(1));"];
  await assert.rejects(
    rt.start({ ...spec("pod-hog", hog), memMB: 64 }),
    /killed by its memory limit \(64 MB; resources\.Mem\), exit code 137/,
  );
});

t(
  "a worker that ended on its own just before it is stopped is told as exited, how included, once",
  async () => {
    const scope = `test-${crypto.randomUUID()}`;
    const exits: string[] = [];
    const rt = new DockerRuntime({ scope, onExit: (id, why) => exits.push(`${id}: ${why}`) });
    await rt.start(spec("pod-gone"));
    const c = docker.getContainer(nameOf(scope, "pod-gone"));
    await c.kill(); // killed from outside (or by its memory limit) while a call ran
    while ((await c.inspect()).State.Running) await new Promise((r) => setTimeout(r, 2));
    // Its pod given back as failed and stopped at once, before the engine told of the exit.
    await rt.stop("pod-gone");
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(exits.length, 1, exits.join("\n"));
    assert.match(exits[0], /^pod-gone: exit code 137; last output:/);
    await assert.rejects(c.inspect(), "its container is removed");
  },
);

Deno.test("a node agent asked for Docker names the socket it found no engine on (DOCKER_HOST)", async () => {
  const store = await openSqliteStore();
  try {
    await assert.rejects(
      nodeagent.start({
        meta: new StateService(store),
        node: dockerNode("n1"),
        dockerHost: "unix:///nonexistent/docker.sock",
      }),
      /no Docker engine answers on \/nonexistent\/docker\.sock \(set DOCKER_HOST=unix:\/\/\/PATH for an engine on another socket\)/,
    );
    // A DOCKER_HOST that is no unix socket (a TCP engine) is said so.
    await assert.rejects(
      nodeagent.start({
        meta: new StateService(store),
        node: dockerNode("n1"),
        dockerHost: "tcp://127.0.0.1:2375",
      }),
      /DOCKER_HOST=tcp:\/\/127\.0\.0\.1:2375 is not a unix socket \(unix:\/\/\/path\)/,
    );
  } finally {
    await store.close();
  }
});

Deno.test("the Docker runtime refuses a node address that is not an IP address", () => {
  assert.throws(() => new DockerRuntime({ host: "localhost" }), /must be an IP address/);
  new DockerRuntime({ host: "::1" });
});

t(
  "a node agent on Docker sizes an auto node from the engine's host, not its own CPU quota",
  async () => {
    const store = await openSqliteStore();
    const meta = new StateService(store);
    const host = (await docker.info()) as { NCPU: number; MemTotal: number };
    const handle = await nodeagent.start({
      meta,
      // Sized auto as an agent under a 1-CPU limit sees it.
      node: { ...dockerNode("n-auto"), cpuMillis: 1000, memMB: 512 },
      scope: `test-${crypto.randomUUID()}`,
      autoSized: { cpu: true, mem: false },
    });
    try {
      const rec = await meta.get({
        type: "node",
        tenant: "system",
        namespace: "system",
        name: "n-auto",
      });
      const node = JSON.parse(rec!.value);
      assert.deepEqual([node.cpuMillis, node.memMB], [host.NCPU * 1000, 512]);
    } finally {
      await handle.stop();
      await store.close();
    }
  },
);

t(
  "an agent whose scope gained the installation's id adopts the containers it started before",
  async () => {
    const scope = `test-${crypto.randomUUID()}`;
    const before = new DockerRuntime({ scope }); // the label was the scope alone
    const pod = await before.start(spec("pod-upgrade"));
    const after = new DockerRuntime({ scope: `${scope}#0123456789abcdef`, legacyScopes: [scope] });
    try {
      const { adopted } = await after.recover();
      assert.deepEqual(adopted.map((a) => a.podId), ["pod-upgrade"]);
      assert.equal((await complete(pod.endpoint)).requests, "1");
    } finally {
      await after.stop("pod-upgrade");
    }
    // Stopped as its own and removed (the earlier runtime, still here in this test, hears the
    // exit too and may be the one whose removal lands: gone within moments either way).
    await until(
      "the container removed",
      () =>
        docker.getContainer(nameOf(scope, "pod-upgrade")).inspect().then(() => false, () => true),
      10_000,
    );
  },
);

t(
  "an agent leaves alone the containers an earlier version marked that its store does not know",
  async () => {
    const scope = `test-${crypto.randomUUID()}`;
    const other = new DockerRuntime({ scope }); // another installation, not yet upgraded
    await other.start(spec("pod-theirs"));
    const store = await openSqliteStore();
    const handle = await nodeagent.start({
      meta: new StateService(store),
      node: dockerNode("n1"),
      scope,
      installId: "0123456789abcdef",
    });
    try {
      await new Promise((r) => setTimeout(r, 500));
      const info = await docker.getContainer(nameOf(scope, "pod-theirs")).inspect();
      assert.equal(info.State.Running, true, "still running");
    } finally {
      await handle.stop();
      await store.close();
      await other.stop("pod-theirs");
    }
  },
);

Deno.test({
  name:
    "without an engine to use the node agent says why: no socket, or one this user may not open (not 'no engine answers')",
  ignore: Deno.uid() !== 0,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir();
    const path = `${dir}/engine.sock`;
    try {
      assert.match(String(await dockerUnavailable(path)), /^no Docker engine answers on /);
      // A socket of another user's, mode 0600, opened by root without its right to pass over
      // permissions: a user outside the engine's group.
      const listener = Deno.listen({ transport: "unix", path });
      try {
        await Deno.chmod(path, 0o600);
        await Deno.chown(path, 65534, 65534);
        const code = `import { dockerUnavailable } from ${
          JSON.stringify(import.meta.resolve("./docker_runtime.ts"))
        };
console.log(await dockerUnavailable(${JSON.stringify(path)}));`;
        const out = await new Deno.Command("setpriv", {
          args: ["--bounding-set", "-dac_override,-dac_read_search", Deno.execPath(), "eval", code],
          stdout: "piped",
          stderr: "piped",
        }).output().catch(() => undefined);
        if (!out) return console.log("no setpriv here: the permission case is not checked");
        const said = new TextDecoder().decode(out.stdout);
        assert.match(said, /may not use the engine's socket .*permission denied/, said);
      } finally {
        listener.close();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("an engine that takes connections and answers nothing is no engine to the check at start", async () => {
  const dir = await Deno.makeTempDir({ prefix: "inferx-engine-" });
  const listener = Deno.listen({ transport: "unix", path: `${dir}/docker.sock` });
  const held: Deno.Conn[] = [];
  (async () => {
    for await (const c of listener) held.push(c); // taken, never answered (a stopped engine)
  })().catch(() => {});
  try {
    const t0 = performance.now();
    const why = await dockerUnavailable(`${dir}/docker.sock`, 300);
    assert.match(why!, /takes connections but answered nothing within 0\.3 s/);
    assert.ok(performance.now() - t0 < 3000);
  } finally {
    listener.close();
    for (const c of held) c.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a start with the engine out of reach fails as unavailable, naming the engine, not the worker", async () => {
  const rt = new DockerRuntime({ scope: "test-gone", socketPath: "/nonexistent/docker.sock" });
  const err = await rt.start(spec("pod-nowhere")).catch((e) => e);
  assert.ok(err instanceof InferxError, String(err));
  assert.equal(err.code, "unavailable");
  assert.match(
    err.message,
    /^Cannot start pod pod-nowhere: the Docker engine on \/nonexistent\/docker\.sock is out of reach \(/,
  );
});
