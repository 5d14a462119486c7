import assert from "node:assert/strict";
import http2 from "node:http2";
import { cuttableProxy, seedNamespace, testCall } from "../common/testing.ts";
import { grpcChannelOptions } from "../common/grpc_options.ts";
import { grpc, loadService, serve, unary } from "./grpc.ts";
import { parseCallId } from "../model/call.ts";
import { startInformer } from "./informer.ts";
import { openSqliteStore } from "../store/sqlite.ts";
import { CompactedError } from "../store/types.ts";
import { StateService } from "../statesvc/service.ts";
import { metaContract } from "./meta_contract.ts";
import { GrpcMetaClient, LIST_ONLY_MS, serveMeta } from "./meta_grpc.ts";

metaContract("MetaClient in-process", async () => {
  const store = await openSqliteStore();
  return { meta: new StateService(store), dispose: () => store.close() };
});

metaContract("MetaClient over gRPC", async () => {
  const store = await openSqliteStore();
  const server = await serveMeta(new StateService(store), "127.0.0.1:0");
  const meta = new GrpcMetaClient(`127.0.0.1:${server.port}`);
  return {
    meta,
    async dispose() {
      meta.close();
      await server.stop();
      await store.close();
    },
  };
});

const t = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });

t("a list larger than gRPC's default 4 MiB limit is read over the wire as in-process", async () => {
  const store = await openSqliteStore();
  const svc = new StateService(store);
  const server = await serveMeta(svc, "127.0.0.1:0");
  const meta = new GrpcMetaClient(`127.0.0.1:${server.port}`);
  try {
    // Four queued calls with bodies of about 1 MiB each.
    await seedNamespace(meta, "acme", "prod");
    const body = btoa("x".repeat(1024 * 1024 - 10));
    for (let i = 0; i < 4; i++) {
      const object = testCall("acme", "prod", { body });
      const name = parseCallId(object.id).key;
      await meta.create({ type: "call", tenant: "acme", namespace: "prod", name, object });
    }
    assert.equal((await meta.list("call")).items.length, 4);
  } finally {
    meta.close();
    await server.stop();
    await store.close();
  }
});

t(
  "a list comes in pieces, whole and in order; from a state service without them, in one",
  async () => {
    const store = await openSqliteStore();
    const svc = new StateService(store);
    await seedNamespace(svc, "acme", "prod");
    // Ten calls of about 1 MiB each: three pieces of ListChunks.
    const body = btoa("x".repeat(1024 * 1024 - 10));
    const names: string[] = [];
    for (let i = 0; i < 10; i++) {
      const object = testCall("acme", "prod", { body });
      names.push(parseCallId(object.id).key);
      await svc.create({ type: "call", tenant: "acme", namespace: "prod", name: names[i], object });
    }
    names.sort();
    const current = await serveMeta(svc, "127.0.0.1:0");
    // An earlier release's state service: no ListChunks (UNIMPLEMENTED), List alone.
    let lists = 0;
    let chunkTries = 0;
    const earlier = await serve(loadService("ixmeta.proto", "ixmeta", "IxMetaService"), {
      ListChunks: (stream: grpc.ServerWritableStream<unknown, unknown>) => {
        chunkTries++;
        stream.emit("error", { code: grpc.status.UNIMPLEMENTED, details: "unknown method" });
      },
      List: unary(async (req: { type: string }) => {
        lists++;
        const { items, revision } = await svc.list(req.type as "call");
        return {
          items: items.map((r) => ({ ref: r, revision: r.revision, value: r.value })),
          revision,
        };
      }),
    }, { address: "127.0.0.1:0" });
    let now = 0;
    const clients = [current.port, earlier.port].map((p) =>
      new GrpcMetaClient(`127.0.0.1:${p}`, { now: () => now })
    );
    try {
      const want = await svc.list("call");
      for (const [i, meta] of clients.entries()) {
        for (let round = 0; round < 2; round++) {
          const got = await meta.list("call");
          assert.deepEqual(got.items.map((r) => r.name), names, `client ${i}`);
          assert.equal(got.revision, want.revision);
          assert.equal(got.items[9].value, want.items[9].value);
        }
      }
      assert.equal(lists, 2, "the earlier service asked for List, once a list");
      assert.equal(chunkTries, 1, "ListChunks not asked for again at once");
      // A minute on, it may have been replaced by this release's: asked again.
      now += LIST_ONLY_MS;
      assert.equal((await clients[1].list("call")).items.length, 10);
      assert.deepEqual([chunkTries, lists], [2, 3]);
    } finally {
      for (const c of clients) c.close();
      await current.stop();
      earlier.server.forceShutdown();
      await store.close();
    }
  },
);

t("a list from a state service without pieces has the lists' deadline, not a call's", async () => {
  const store = await openSqliteStore();
  const svc = new StateService(store);
  await seedNamespace(svc, "acme", "prod");
  const earlier = await serve(loadService("ixmeta.proto", "ixmeta", "IxMetaService"), {
    ListChunks: (stream: grpc.ServerWritableStream<unknown, unknown>) => {
      stream.emit("error", { code: grpc.status.UNIMPLEMENTED, details: "unknown method" });
    },
    // Longer than a call's deadline: a list of many objects in one message.
    List: unary(async (req: { type: string }) => {
      await new Promise((r) => setTimeout(r, 700));
      const { items, revision } = await svc.list(req.type as "namespace");
      return {
        items: items.map((r) => ({ ref: r, revision: r.revision, value: r.value })),
        revision,
      };
    }),
  }, { address: "127.0.0.1:0" });
  const meta = new GrpcMetaClient(`127.0.0.1:${earlier.port}`, {
    timeoutMs: 300,
    listTimeoutMs: 5000,
  });
  try {
    assert.equal((await meta.list("namespace")).items.length, 1);
  } finally {
    meta.close();
    earlier.server.forceShutdown();
    await store.close();
  }
});

t("a list in pieces its reader left is dropped by the state service, not held", async () => {
  const store = await openSqliteStore();
  const svc = new StateService(store);
  await seedNamespace(svc, "acme", "prod");
  const [ns] = (await svc.list("namespace")).items;
  // Forty pieces of 4 MiB; the state service notes when it stops walking them.
  let walked = 0;
  let left!: () => void;
  const dropped = new Promise<void>((r) => left = r);
  const many = {
    *[Symbol.iterator]() {
      try {
        for (let i = 0; i < 40 * 64; i++) {
          walked++;
          yield { ...ns, value: "x".repeat(64 * 1024) };
        }
      } finally {
        left();
      }
    },
    length: 40 * 64,
  };
  const lister = Object.create(svc, {
    list: { value: () => Promise.resolve({ items: many, revision: ns.revision }) },
  });
  const server = await serveMeta(lister, "127.0.0.1:0");
  const Client = loadService("ixmeta.proto", "ixmeta", "IxMetaService");
  const client = new Client(
    `127.0.0.1:${server.port}`,
    grpc.credentials.createInsecure(),
    grpcChannelOptions({}),
  );
  try {
    const stream = client.ListChunks({ type: "namespace", tenant: "", namespace: "" });
    stream.on("error", () => {});
    // Read one piece, then none: the state service waits for room, until the call is cancelled.
    await new Promise((r) => stream.once("data", r));
    stream.pause();
    await new Promise((r) => setTimeout(r, 300));
    stream.cancel();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<string>((r) => timer = setTimeout(() => r("still held"), 5000));
    assert.equal(await Promise.race([dropped.then(() => "dropped"), late]), "dropped");
    clearTimeout(timer);
    assert.ok(walked < 40 * 64, `the whole list walked: ${walked} records`);
  } finally {
    client.close();
    await server.stop();
    await store.close();
  }
});

t(
  "a connection whose peer went silent is found by keepalive: calls and watches come back",
  async () => {
    const store = await openSqliteStore();
    const svc = new StateService(store);
    const server = await serveMeta(svc, "127.0.0.1:0");
    const proxy = cuttableProxy(server.port);
    const meta = new GrpcMetaClient(`127.0.0.1:${proxy.port}`, {
      timeoutMs: 1000,
      keepaliveMs: 300,
      keepaliveTimeoutMs: 300,
    });
    const seen: string[] = [];
    const informer = await startInformer(meta, "tenant", {
      upsert: (r) => seen.push(r.name),
      remove() {},
    }, { retryMs: 100 });
    try {
      proxy.cut();
      await svc.create({
        type: "tenant",
        tenant: "system",
        namespace: "system",
        name: "acme",
        object: {},
      });
      // Before, every call timed out on the dead connection and the watch never saw acme.
      for (const deadline = Date.now() + 15_000; !seen.includes("acme");) {
        assert.ok(Date.now() < deadline, "the informer never saw the tenant made after the cut");
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(typeof await meta.version(), "string");
    } finally {
      informer.stop();
      meta.close();
      proxy.close();
      await server.stop();
      await store.close();
    }
  },
);

t(
  "a watch whose watcher stops reading ends once its unsent events pass the bound, not held for ever",
  async () => {
    const store = await openSqliteStore();
    const svc = new StateService(store);
    const server = await serveMeta(svc, "127.0.0.1:0", { watchUnsentMaxBytes: 4 * 1024 * 1024 });
    const session = http2.connect(`http://127.0.0.1:${server.port}`);
    try {
      await seedNamespace(svc, "t", "n");
      // A Watch of functions (field 1: "function"), its answer never read.
      const msg = new Uint8Array([0x0a, 8, ...new TextEncoder().encode("function")]);
      const frame = new Uint8Array([0, 0, 0, 0, msg.length, ...msg]);
      const req = session.request({
        ":method": "POST",
        ":path": "/ixmeta.IxMetaService/Watch",
        "content-type": "application/grpc",
        te: "trailers",
      });
      req.end(frame);
      req.pause();
      let trailers: Record<string, unknown> | undefined;
      req.on("trailers", (h) => trailers = h);
      const closed = new Promise((r) => req.on("close", r));
      await new Promise((r) => setTimeout(r, 100)); // watching
      // About 180 KB each: 40 of them (7 MB) are well past the bound and the stream's windows.
      const annotations = { a: "x".repeat(60_000), b: "x".repeat(60_000), c: "x".repeat(60_000) };
      for (let i = 0; i < 40; i++) {
        await svc.create({
          type: "function",
          tenant: "t",
          namespace: "n",
          name: `f${i}`,
          object: { metadata: { annotations }, spec: { image: "x" } },
        });
      }
      req.resume(); // now read what is there: the answer ends with the status
      req.on("data", () => {});
      await closed;
      assert.equal(String(trailers?.["grpc-status"]), "8", JSON.stringify(trailers)); // RESOURCE_EXHAUSTED
      assert.match(
        decodeURIComponent(String(trailers?.["grpc-message"])),
        /left \d+ bytes of events unread/,
      );
    } finally {
      session.close();
      await server.stop();
      await store.close();
    }
  },
);

t(
  "a watch from a compacted revision ends over gRPC with that error, so its client lists again",
  async () => {
    const store = await openSqliteStore(":memory:", { historyLimit: 3 });
    const svc = new StateService(store);
    const server = await serveMeta(svc, "127.0.0.1:0");
    const meta = new GrpcMetaClient(`127.0.0.1:${server.port}`);
    try {
      await seedNamespace(svc, "t", "n");
      for (let i = 0; i < 6; i++) {
        await svc.create({
          type: "function",
          tenant: "t",
          namespace: "n",
          name: `f${i}`,
          object: { spec: { image: "x" } },
        });
      }
      const ended = await new Promise<unknown>((resolve) => {
        const timer = setTimeout(() => resolve("no end within 5 s"), 5000);
        meta.watch("function", {
          afterRevision: 1,
          onEvent() {},
          onError(err) {
            clearTimeout(timer);
            resolve(err);
          },
        });
      });
      assert.ok(ended instanceof CompactedError, String(ended));
    } finally {
      meta.close();
      await server.stop();
      await store.close();
    }
  },
);
