import assert from "node:assert/strict";
import { storeContract } from "./contract.ts";
import { openEtcdStore } from "./etcd.ts";
import { etcdUnavailable, startEtcd } from "./etcd_server.ts";
import { CompactedError } from "./types.ts";
import { InferxError } from "../common/errors.ts";

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

Deno.test({
  name: "etcd store answers unavailable while etcd is down, and works again once it is back",
  ignore: missing !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const etcd = await startEtcd();
    const store = await openEtcdStore(etcd.url, { timeoutMs: 1000 });
    try {
      const r1 = await store.create("/registry/o/t/n/a", "1");
      await etcd.down();
      for (
        const op of [
          () => store.get("/registry/o/t/n/a"),
          () => store.update("/registry/o/t/n/a", "2", r1),
        ]
      ) {
        await assert.rejects(op(), (err: unknown) => {
          assert.ok(err instanceof InferxError && err.code === "unavailable", String(err));
          assert.match(err.message, /etcd did not answer/);
          return err.retryable;
        });
      }
      await etcd.up();
      let value: string | undefined;
      for (let i = 0; i < 100 && value === undefined; i++) {
        value = await store.get("/registry/o/t/n/a").then((kv) => kv?.value, () => undefined);
        if (value === undefined) await new Promise((r) => setTimeout(r, 200));
      }
      assert.equal(value, "1", "the data survived and the store answers again");
    } finally {
      await store.close();
      await etcd.stop();
    }
  },
});
