import assert from "node:assert/strict";
import { storeContract } from "./contract.ts";
import { openEtcdStore } from "./etcd.ts";
import { etcdUnavailable, startEtcd } from "./etcd_server.ts";
import { CompactedError } from "./types.ts";

const missing = etcdUnavailable();

storeContract("etcd", async () => {
  const etcd = await startEtcd();
  let store = await openEtcdStore(etcd.url);
  return {
    get store() {
      return store;
    },
    async reopen() {
      await store.close();
      store = await openEtcdStore(etcd.url);
      return store;
    },
    async dispose() {
      await store.close();
      await etcd.stop();
    },
  };
}, { ignoreReason: missing });

Deno.test({
  name: "etcd store reports a watch from a compacted revision so the caller lists again",
  ignore: missing !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const etcd = await startEtcd();
    const store = await openEtcdStore(etcd.url);
    try {
      const r1 = await store.create("/registry/c/t/n/a", "1");
      for (let i = 0; i < 5; i++) await store.update("/registry/c/t/n/a", String(i), r1 + i);
      const last = await store.revision();
      await store.client.kv.compact({ revision: last });
      const err = await new Promise<Error>((resolve) =>
        store.watch("/registry/c/", { afterRevision: r1, onEvent() {}, onError: resolve })
      );
      assert.ok(err instanceof CompactedError, err.message);
    } finally {
      await store.close();
      await etcd.stop();
    }
  },
});

Deno.test({
  name: "openEtcdStore() says clearly when etcd cannot be reached",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await assert.rejects(
      openEtcdStore("http://127.0.0.1:1", { timeoutMs: 500 }),
      /Cannot reach etcd at http:\/\/127\.0\.0\.1:1/,
    );
  },
});
