/**
 * A role given an etcd setting it cannot act on says so at start: `All`
 * runs on its embedded store whatever `ETCD_ADDRS` says, and a scheduler
 * without etcd leads with no election (two such replicas would both place
 * pods).
 */
import assert from "node:assert/strict";
import { freePort } from "../../src/common/net.ts";
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
