/**
 * A role given an etcd setting it cannot act on says so at start: `All`
 * runs on its embedded store whatever `ETCD_ADDRS` says, and a scheduler
 * without etcd leads with no election (two such replicas would both place
 * pods).
 */
import assert from "node:assert/strict";
import { freePort } from "../../src/common/net.ts";
import { scopeTag } from "../../src/nodeagent/mod.ts";
import { listening, spawnRole, startPlatform } from "./helpers.ts";

Deno.test({
  name: "All given ETCD_ADDRS warns that it runs on its embedded store",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    // Nothing listens there: All must not try it.
    const p = await startPlatform({ ETCD_ADDRS: `http://127.0.0.1:${freePort()}` });
    try {
      assert.match(
        p.output(),
        /ETCD_ADDRS is set but All runs on its embedded store: etcd is for the roles run apart/,
      );
    } finally {
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
    }
  },
});

Deno.test({
  name: "A scheduler without ETCD_ADDRS warns that it leads without an election",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "inferx-roles-" });
    const port = { statesvc: freePort(), scheduler: freePort(), http: freePort() };
    const state = await spawnRole({
      RUN_SERVICE: "StateSvc",
      STATESVC_PORT: String(port.statesvc),
      INFERX_DATA_DIR: dir,
    }, () => listening(port.statesvc));
    try {
      const scheduler = await spawnRole({
        RUN_SERVICE: "Scheduler",
        STATESVC_ADDR: `127.0.0.1:${port.statesvc}`,
        SCHEDULER_PORT: String(port.scheduler),
        SCHEDULER_HTTP_PORT: String(port.http),
      }, async () => {
        const r = await fetch(`http://127.0.0.1:${port.http}/health`);
        return (await r.json()).leader === true;
      });
      await scheduler.stop();
      assert.match(
        scheduler.output(),
        /Scheduler \S+ leads without an election \(ETCD_ADDRS is unset\): run one replica only/,
      );
    } finally {
      await state.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "A scheduler that cannot reach the state service at its start exits, as the other roles do",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dead = freePort(); // nothing listens there
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL("../../main.ts", import.meta.url).pathname],
      env: {
        RUN_SERVICE: "Scheduler",
        STATESVC_ADDR: `127.0.0.1:${dead}`,
        SCHEDULER_PORT: String(freePort()),
        SCHEDULER_HTTP_PORT: String(freePort()),
      },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 1);
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assert.match(
      text,
      /Cannot start Scheduler: Cannot reach the state service at 127\.0\.0\.1:\d+/,
    );
  },
});

Deno.test({
  name:
    "roles with INFERX_CLUSTER_TOKEN take calls only from roles with the same: another exits saying so",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "inferx-roles-" });
    const token = "cluster-token-0123456789abcdef";
    const port = { statesvc: freePort(), scheduler: freePort(), http: freePort() };
    const state = await spawnRole({
      RUN_SERVICE: "StateSvc",
      STATESVC_PORT: String(port.statesvc),
      INFERX_DATA_DIR: dir,
      INFERX_CLUSTER_TOKEN: token,
    }, () => listening(port.statesvc));
    const scheduler = (clusterToken?: string) => ({
      RUN_SERVICE: "Scheduler",
      STATESVC_ADDR: `127.0.0.1:${port.statesvc}`,
      SCHEDULER_PORT: String(port.scheduler),
      SCHEDULER_HTTP_PORT: String(port.http),
      ...(clusterToken ? { INFERX_CLUSTER_TOKEN: clusterToken } : {}),
    });
    try {
      for (
        const [sent, said] of [
          [undefined, /the state service at 127\.0\.0\.1:\d+ takes calls only with the cluster's/],
          [`${token}-other`, /refused this role's cluster token: INFERX_CLUSTER_TOKEN differs/],
        ] as const
      ) {
        const out = await new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", new URL("../../main.ts", import.meta.url).pathname],
          env: scheduler(sent),
          stdout: "piped",
          stderr: "piped",
        }).output();
        assert.equal(out.code, 1);
        const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
        assert.match(text, said);
      }
      // The same token: it reaches the state service and leads.
      const ok = await spawnRole(scheduler(token), async () => {
        const r = await fetch(`http://127.0.0.1:${port.http}/health`);
        return (await r.json()).leader === true;
      });
      await ok.stop();
    } finally {
      await state.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** The control groups named `name` under the host's cgroup mounts. */
async function groupsNamed(name: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (dir: string, depth: number): Promise<void> => {
    if (depth > 4) return;
    try {
      for await (const e of Deno.readDir(dir)) {
        if (!e.isDirectory) continue;
        if (e.name === name) found.push(`${dir}/${e.name}`);
        else if (!e.name.startsWith("inferx-")) await walk(`${dir}/${e.name}`, depth + 1);
      }
    } catch {
      // not readable
    }
  };
  await walk("/sys/fs/cgroup", 0);
  return found;
}

Deno.test({
  name:
    "All that cannot start (its port taken) stops what it had started: no control group is left",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const port = freePort();
    const taken = Deno.listen({ hostname: "127.0.0.1", port });
    const dir = await Deno.makeTempDir({ prefix: "inferx-e2e-" });
    try {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", new URL("../../main.ts", import.meta.url).pathname],
        env: {
          GATEWAY_PORT: String(port),
          INFERX_DATA_DIR: dir,
          INFERX_SAMPLES: "none",
          INFERX_RUNTIME: "process",
          INFERX_POD_NETNS: "off",
          NODE_NAME: "roles-test",
        },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 1, text);
      assert.match(text, /Cannot start All/);
      // The node agent made its groups (named by its scope: node and data directory) before
      // the gateway found its port taken.
      const tag = scopeTag(`roles-test@${await Deno.realPath(dir)}`);
      assert.deepEqual(await groupsNamed(`inferx-${tag}`), [], text);
    } finally {
      taken.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
