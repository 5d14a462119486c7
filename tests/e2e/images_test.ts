/**
 * The platform in containers, end to end: builds the images (no registry),
 * starts one offline (`--network none`, read-only) to show that it needs
 * nothing from the network, then brings up deploy/compose.yaml on free
 * ports, registers a function, calls it cold and warm through the gateway
 * container, kills the leading scheduler's container and calls again. Every
 * Docker object it makes carries this run's name and is removed at the end,
 * whether the test passed or not. Prints how long each step took.
 */
import assert from "node:assert/strict";
import { buildImages, IMAGE_UID, imageName, roleImages, VERSION } from "../../deploy/images.ts";
import { run } from "../../src/common/rootfs.ts";
import { dockerAvailable } from "../../src/nodeagent/docker_runtime.ts";
import { freePort } from "../../src/common/net.ts";
import { imageExists, NGRAM_IMAGE } from "../../src/samples/ngram/image.ts";
import { etcdUnavailable } from "../../src/store/etcd_server.ts";
import { postgresBinDir } from "../../src/audit/pg_server.ts";
import {
  createNamespace,
  eventually,
  type Json,
  ngramFunction,
  putObject,
  request,
} from "./helpers.ts";

const COMPOSE_FILE = new URL("../../deploy/compose.yaml", import.meta.url).pathname;

/** `docker compose` (v2) or Debian's `docker-compose` (1.29), whichever is here. */
async function composeCommand(): Promise<string[] | undefined> {
  for (const cmd of [["docker", "compose"], ["docker-compose"]]) {
    try {
      await run(cmd[0], [...cmd.slice(1), "version"]);
      return cmd;
    } catch {
      // not this one
    }
  }
  return undefined;
}

const compose = await composeCommand();
const reason = !(await dockerAvailable())
  ? "no Docker engine answers on /var/run/docker.sock"
  : !compose
  ? "neither `docker compose` nor `docker-compose` is installed (Debian package docker-compose)"
  : !(await imageExists(NGRAM_IMAGE))
  ? `image ${NGRAM_IMAGE} is missing (deno task image builds it)`
  : etcdUnavailable() ??
    (postgresBinDir() ? undefined : "PostgreSQL is not installed (Debian package postgresql)");
if (reason) console.log(`skipping the container images end-to-end test: ${reason}`);

Deno.test({
  name:
    "images: the compose stack serves a function cold and warm and survives losing the leading scheduler",
  ignore: reason !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const id = crypto.randomUUID().slice(0, 8);
    const tag = `e2e-${id}`;
    const project = `inferx-images-${id}`;
    const node = `images-e2e-${id}`;
    const offline = `inferx-images-${id}-offline`;
    const ports = Object.fromEntries(
      [
        "ETCD_PORT",
        "ETCD_PEER_PORT",
        "AUDITDB_PORT",
        "STATESVC_PORT",
        "SCHEDULER_PORT",
        "SCHEDULER_HTTP_PORT",
        "SCHEDULER2_PORT",
        "SCHEDULER2_HTTP_PORT",
        "GATEWAY_PORT",
        "NODEAGENT_PORT",
      ].map((k) => [k, String(freePort())]),
    );
    const env = {
      ...ports,
      INFERX_TAG: tag,
      NODE_NAME: node,
      COMPOSE_PROJECT_NAME: project,
      // The roles' calls to each other carry it, as the file's header asks.
      INFERX_CLUSTER_TOKEN: `compose-${crypto.randomUUID()}`,
    };
    const dc = (...args: string[]) =>
      run(compose![0], [...compose!.slice(1), "-p", project, "-f", COMPOSE_FILE, ...args], {
        env,
      });
    const gw = `http://127.0.0.1:${ports.GATEWAY_PORT}`;
    const times: Record<string, number> = {};
    const timed = async <T>(what: string, f: () => Promise<T>): Promise<T> => {
      const t0 = performance.now();
      const out = await f();
      times[what] = Math.round(performance.now() - t0);
      return out;
    };
    const built: string[] = [];
    try {
      // 1. The images, marked with this run's tag and label.
      const images = await timed(
        "build the 6 images",
        () => buildImages({ tag, labels: { "inferx.test": project }, worker: false }),
      );
      built.push(...images.map((i) => i.name));
      const inspect = async (name: string): Promise<Json> =>
        JSON.parse(await run("docker", ["image", "inspect", name]))[0];
      const layers = new Set<string>();
      for (const [role, want] of Object.entries(roleImages())) {
        const img = await inspect(imageName(role, { tag }));
        assert.equal(img.Config.User, want.user, `${role} user`);
        assert.equal(img.Config.Labels["org.opencontainers.image.version"], VERSION);
        assert.match(
          img.Config.Labels["org.opencontainers.image.revision"],
          /^([0-9a-f]{40}|unknown)/,
        );
        assert.equal(img.Config.Labels["inferx.test"], project);
        assert.deepEqual(img.Config.Entrypoint, want.entrypoint);
        layers.add(JSON.stringify(img.RootFS.Layers));
      }
      assert.equal(layers.size, 1, "the four role images share one stored layer");
      for (const what of ["etcd", "postgres"]) {
        assert.equal(
          (await inspect(imageName(what, { tag }))).Config.User,
          `${IMAGE_UID}:${IMAGE_UID}`,
        );
      }
      console.log(images.map((i) => `  ${i.name}: ${(i.size / 1e6).toFixed(1)} MB`).join("\n"));
      // The command line names itself as it is run from an image (it said `deno task ctl`).
      const usage = await run("docker", [
        "run",
        "--rm",
        "--network",
        "none",
        "--label",
        `inferx.test=${project}`,
        imageName("gateway", { tag }),
        "ctl",
        "--help",
      ]);
      assert.match(usage, /^usage: docker run --rm IMAGE ctl \[--gateway URL\] <command>/);

      // 2. Offline, read-only, every role in one process: healthy means it loaded and serves.
      await timed("offline start-up check (All, --network none, read-only)", async () => {
        await run("docker", [
          "run",
          "-d",
          "--name",
          offline,
          "--label",
          `inferx.test=${project}`,
          "--network",
          "none",
          "--read-only",
          "--tmpfs",
          `/data:uid=${IMAGE_UID},gid=${IMAGE_UID}`,
          "--tmpfs",
          "/tmp",
          "-e",
          "RUN_SERVICE=All",
          "-e",
          "INFERX_RUNTIME=process",
          "--health-interval=1s",
          imageName("gateway", { tag }),
        ]);
        await eventually("the offline container is healthy", async () => {
          const state = JSON.parse(
            await run("docker", ["inspect", "--format", "{{json .State}}", offline]),
          );
          assert.notEqual(state.Status, "exited", await run("docker", ["logs", offline]));
          return state.Health?.Status === "healthy";
        }, 60_000);
        await run("docker", ["rm", "-f", offline]);
      });

      // 3. The stack.
      await timed("compose up to a ready node", async () => {
        await dc("up", "-d");
        await eventually(
          "the gateway answers",
          async () => (await fetch(`${gw}/health`).then((r) => (r.body?.cancel(), r.ok)).catch(() =>
            false
          )),
          90_000,
        );
        await eventually("the node agent registered", async () => {
          const r = await request(`${gw}/nodes`).catch(() => undefined);
          return Array.isArray(r?.body) && r.body.some((n: Json) => n.name === node && n.ready);
        }, 60_000);
      });
      const health = async (port: string): Promise<Json> =>
        await (await fetch(`http://127.0.0.1:${port}/health`)).json();
      const leaderOf = async () => {
        const [a, b] = await Promise.all([
          health(ports.SCHEDULER_HTTP_PORT).catch(() => ({})),
          health(ports.SCHEDULER2_HTTP_PORT).catch(() => ({})),
        ]);
        return a.leader ? "scheduler1" : b.leader ? "scheduler2" : undefined;
      };
      await eventually("a scheduler leads", async () => (await leaderOf()) !== undefined, 30_000);

      await createNamespace(gw, "img", "ns");
      const register = async (name: string) => {
        const r = await putObject(
          gw,
          ngramFunction("img", "ns", name, {
            image: NGRAM_IMAGE,
            endpoint: { port: 8000, probe: "/health" },
            resources: { CPU: 300, Mem: 256 },
            policy: { Obj: { scalein_timeout: 30 } },
          }),
        );
        assert.equal(r.status, 201, JSON.stringify(r.body));
      };
      const call = (name: string) =>
        request(`${gw}/funccall/img/ns/${name}/v1/completions`, {
          body: { prompt: "The GPU", max_tokens: 8 },
          headers: { "x-inferx-timeout": "60" },
        });
      await register("lm");
      const cold = await timed("cold call", () => call("lm"));
      assert.equal(cold.status, 200, JSON.stringify(cold.body));
      assert.equal(cold.headers.get("x-inferx-cold-start"), "1");
      const warm = await timed("warm call", () => call("lm"));
      assert.equal(warm.status, 200);
      assert.equal(warm.headers.get("x-inferx-cold-start"), "0");
      assert.equal(warm.headers.get("x-inferx-pod"), cold.headers.get("x-inferx-pod"));

      // The worker is a container of this node's agent, published on 127.0.0.1 only.
      // Its scope: the node, the data directory and this installation's id.
      const workers = (await run("docker", [
        "ps",
        "--filter",
        "label=inferx.scope",
        "--format",
        '{{.ID}} {{.Label "inferx.scope"}}',
      ])).trim().split("\n").filter((l) => l.includes(` ${node}@/var/lib/inferx#`))
        .map((l) => l.split(" ")[0]);
      assert.equal(workers.length, 1);
      const bindings = JSON.parse(
        await run("docker", ["inspect", "--format", "{{json .NetworkSettings.Ports}}", workers[0]]),
      ) as Record<string, { HostIp: string }[] | null>;
      const ips = Object.values(bindings).flatMap((b) => b ?? []).map((b) => b.HostIp);
      assert.ok(ips.length > 0 && ips.every((ip) => ip === "127.0.0.1"), JSON.stringify(bindings));

      // 4. The leading scheduler's container dies; the other replica takes over.
      const leader = (await leaderOf())!;
      const other = leader === "scheduler1" ? "scheduler2" : "scheduler1";
      const otherHttp = other === "scheduler1"
        ? ports.SCHEDULER_HTTP_PORT
        : ports.SCHEDULER2_HTTP_PORT;
      await run("docker", ["kill", (await dc("ps", "-q", leader)).trim()]);
      await timed(
        "scheduler leader killed -> the other leads",
        () =>
          eventually(
            `${other} leads`,
            async () => (await health(otherHttp).catch(() => ({}))).leader === true,
            30_000,
          ),
      );
      await register("lm2");
      const afterKill = await timed(
        "cold call of a new function after the failover",
        () => call("lm2"),
      );
      assert.equal(afterKill.status, 200, JSON.stringify(afterKill.body));
      assert.equal(afterKill.headers.get("x-inferx-cold-start"), "1");
      assert.equal((await call("lm")).status, 200, "the first function still answers");

      // 5. Docker's own health check of the gateway container.
      const gatewayId = (await dc("ps", "-q", "gateway")).trim();
      await eventually(
        "the gateway container is healthy",
        async () =>
          (await run("docker", ["inspect", "--format", "{{.State.Health.Status}}", gatewayId]))
            .trim() === "healthy",
        40_000,
      );
      const top = (await run("docker", ["top", gatewayId, "-o", "pid,uid"])).trim().split("\n");
      const uid = top[1].trim().split(/\s+/)[1];
      assert.equal(uid, String(IMAGE_UID), "the gateway runs as a non-root user");
    } catch (err) {
      const logs = await dc("logs", "--no-color", "--tail=25").catch((e) => String(e));
      console.log(`compose logs:\n${logs}`);
      throw err;
    } finally {
      await timed("teardown", async () => {
        await dc("down", "-v", "--remove-orphans", "-t", "5").catch((e) =>
          console.log(`compose down: ${e.message}`)
        );
        const leftovers = async (kind: string, filter: string) =>
          (await run("docker", [
            kind,
            "ls",
            "-q",
            ...(kind === "container" ? ["-a"] : []),
            "--filter",
            filter,
          ]))
            .trim().split("\n").filter(Boolean);
        const containers = [
          ...await leftovers("container", `label=com.docker.compose.project=${project}`),
          ...await leftovers("container", `label=inferx.scope=${node}@/var/lib/inferx`),
          ...await leftovers("container", `label=inferx.test=${project}`),
        ];
        if (containers.length) await run("docker", ["rm", "-f", "-v", ...containers]);
        const volumes = await leftovers("volume", `label=com.docker.compose.project=${project}`);
        if (volumes.length) await run("docker", ["volume", "rm", "-f", ...volumes]);
        const networks = await leftovers("network", `label=com.docker.compose.project=${project}`);
        if (networks.length) await run("docker", ["network", "rm", ...networks]);
        if (built.length) await run("docker", ["rmi", ...built]).catch(() => {});
        const images = await leftovers("image", `label=inferx.test=${project}`);
        if (images.length) await run("docker", ["rmi", "-f", ...images]);
      });
      console.log(
        Object.entries(times).map(([k, v]) => `  ${k}: ${(v / 1000).toFixed(1)} s`).join("\n"),
      );
    }
  },
});
