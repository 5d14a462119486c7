import assert from "node:assert/strict";
import { fromGrpcError, grpc, toGrpcError } from "./grpc.ts";
import { AlreadyExistsError, ConflictError, InferxError, NotFoundError } from "../common/errors.ts";
import { freePort } from "../common/net.ts";
import { GrpcMetaClient, serveMeta } from "./meta_grpc.ts";
import { openSqliteStore } from "../store/sqlite.ts";
import { StateService } from "../statesvc/service.ts";
import type { MetaStore } from "../store/types.ts";

Deno.test("a message over the size limit, raised by the library itself, is too_large and not retried", () => {
  const e = fromGrpcError(
    {
      code: grpc.status.RESOURCE_EXHAUSTED,
      details: "Received message larger than max (5593906 vs 4194304)",
    },
    "the state service",
  );
  assert.equal(e.code, "too_large");
  assert.equal(e.retryable, false);
});

Deno.test("a connection error's empty resolution note is left out of the message", () => {
  const e = fromGrpcError(
    {
      code: grpc.status.UNAVAILABLE,
      details: "No connection established. Last error: Error: connect ECONNREFUSED " +
        "127.0.0.1:1238. Resolution note: ",
    },
    "the scheduler",
  );
  assert.equal(
    e.message,
    "Cannot reach the scheduler: No connection established. Last error: Error: connect " +
      "ECONNREFUSED",
  );
  // Named, not addressed, whatever the address's form.
  for (const at of ["10.1.2.3:1238", "[fd00::1]:1238", "scheduler.inferx.svc:1238"]) {
    const e = fromGrpcError(
      { code: grpc.status.UNAVAILABLE, details: `connect ECONNREFUSED ${at} (at 12:00:01)` },
      "the scheduler",
    );
    assert.equal(e.message, "Cannot reach the scheduler: connect ECONNREFUSED (at 12:00:01)");
  }
  // A note with words in it stays.
  const noted = fromGrpcError(
    { code: grpc.status.UNAVAILABLE, details: "No addresses resolved. Resolution note: bad name" },
    "the scheduler",
  );
  assert.match(noted.message, /Resolution note: bad name$/);
});

Deno.test("a client's own deadline is a role out of reach (503, to try again), not a call's timeout", () => {
  const e = fromGrpcError(
    {
      code: grpc.status.DEADLINE_EXCEEDED,
      details: "Deadline exceeded after 5.000s,remote_addr=127.0.0.1:4782",
    },
    "the state service",
  );
  assert.equal(e.code, "unavailable");
  assert.equal(e.retryable, true);
  assert.equal(
    e.message,
    "No answer from the state service in time: it, or the store it waits on, is slow or out of reach",
  );
  // A role's own timeout (a lease that waited its whole time) keeps its code.
  const own = fromGrpcError(toGrpcError(new InferxError("timeout", "no worker in 30 s")), "x");
  assert.equal(own.code, "timeout");
});

Deno.test("the platform's own RESOURCE_EXHAUSTED errors keep their codes across the wire", () => {
  for (const code of ["queue_full", "quota_exceeded", "unschedulable", "too_large"] as const) {
    const wire = toGrpcError(new InferxError(code, "x"));
    assert.equal(wire.code, grpc.status.RESOURCE_EXHAUSTED);
    assert.equal(fromGrpcError(wire, "peer").code, code);
  }
});

Deno.test("a server stopped while its process exits sends no GOAWAY: its connections stay to the exit", async () => {
  // In a process of its own: exitingProcess() holds for the whole process.
  const script = `
    import { openSqliteStore } from "${new URL("../store/sqlite.ts", import.meta.url)}";
    import { StateService } from "${new URL("../statesvc/service.ts", import.meta.url)}";
    import { GrpcMetaClient, serveMeta } from "${new URL("./meta_grpc.ts", import.meta.url)}";
    import { exitingProcess } from "${new URL("./grpc.ts", import.meta.url)}";
    const store = await openSqliteStore();
    const server = await serveMeta(new StateService(store), "127.0.0.1:0");
    const meta = new GrpcMetaClient("127.0.0.1:" + server.port, { timeoutMs: 2000 });
    await meta.version();
    exitingProcess();
    await server.stop();
    console.log(await meta.version().then(() => "still connected", (e) => e.code));
    Deno.exit(0);
  `;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--ext=ts", script],
    stderr: "inherit",
  }).output();
  assert.equal(new TextDecoder().decode(out.stdout).trim(), "still connected");
});

Deno.test({
  name: "a call no connection could carry says nothing was written; one cut off midway does not",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    // Nothing listens there: the library fails the call before it goes out.
    const port = freePort();
    const meta = new GrpcMetaClient(`127.0.0.1:${port}`, { timeoutMs: 2000 });
    try {
      const err = await meta.get({
        type: "tenant",
        tenant: "system",
        namespace: "system",
        name: "t",
      })
        .catch((e) => e);
      assert.ok(err instanceof InferxError, String(err));
      assert.equal(err.code, "unavailable");
      assert.deepEqual(err.details, { not_written: true });
    } finally {
      meta.close();
    }
    // The connection dropped with the call under way: the role may have written it.
    const dropped = fromGrpcError(
      { code: grpc.status.UNAVAILABLE, details: "Connection dropped" },
      "the state service",
    );
    assert.equal(dropped.code, "unavailable");
    assert.equal(dropped.details, undefined);
  },
});

Deno.test("a role's not_found, conflict and already_exists come back as the classes callers test for", () => {
  const cases = [
    [new NotFoundError("Call t:n:c does not exist"), NotFoundError],
    [new ConflictError("Revision 3 is not 4", { revision: 4 }), ConflictError],
    [new AlreadyExistsError("function t/n/f exists"), AlreadyExistsError],
  ] as const;
  for (const [sent, cls] of cases) {
    const back = fromGrpcError(toGrpcError(sent), "the state service");
    assert.ok(back instanceof cls, `${sent.code}: ${back.constructor.name}`);
    assert.equal(back.code, sent.code);
    assert.equal(back.message, sent.message);
    assert.equal(back.retryable, sent.retryable);
    assert.deepEqual(back.details, sent.details);
  }
});

const TOKEN = "cluster-secret-0123456789";

/** A state service over `store` on a free port, asking `clusterToken` of its callers if given. */
function stateService(store: MetaStore, clusterToken?: string) {
  return serveMeta(new StateService(store), "127.0.0.1:0", { clusterToken });
}

Deno.test({
  name: "with a cluster token, a role refuses every call without it, unary and streaming, as 503s",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const store = await openSqliteStore();
    const token = TOKEN;
    const server = await stateService(store, token);
    const at = `127.0.0.1:${server.port}`;
    const clients = {
      none: new GrpcMetaClient(at, { timeoutMs: 2000 }),
      wrong: new GrpcMetaClient(at, { timeoutMs: 2000, clusterToken: `${token}x` }),
      right: new GrpcMetaClient(at, { timeoutMs: 2000, clusterToken: token }),
    };
    try {
      const none = await clients.none.version().catch((e) => e);
      assert.ok(none instanceof InferxError, String(none));
      // The caller's role is misconfigured: a 503 to its callers, never a 401 about their key.
      assert.equal(none.code, "unavailable");
      assert.equal(none.retryable, false);
      assert.match(none.message, /takes calls only with the cluster's token: set INFERX_CLUSTER/);
      const wrong = await clients.wrong.list("tenant").catch((e) => e);
      assert.equal(wrong.code, "unavailable");
      assert.match(
        wrong.message,
        /refused this role's cluster token: INFERX_CLUSTER_TOKEN differs/,
      );
      assert.equal(typeof await clients.right.version(), "string");
      assert.ok((await clients.right.list("tenant")).items.length >= 0);
      // A stream (a watch) is refused the same way, before anything is sent on it.
      const ended = await new Promise<Error>((resolve) => {
        clients.none.watch("tenant", { onEvent() {}, onError: resolve });
      });
      assert.ok(ended instanceof InferxError);
      assert.equal(ended.code, "unavailable");
      assert.match(ended.message, /cluster's token/);
      // With the token, the watch delivers.
      const seen = new Promise<string>((resolve) => {
        const w = clients.right.watch("tenant", {
          onEvent(ev) {
            if (ev.type === "put") {
              w.cancel();
              resolve(ev.record.name);
            }
          },
        });
      });
      await clients.right.create({
        type: "tenant",
        tenant: "system",
        namespace: "system",
        name: "tok",
        object: {},
      });
      assert.equal(await seen, "tok");
    } finally {
      for (const c of Object.values(clients)) c.close();
      await server.stop();
      store.close();
    }
  },
});

Deno.test({
  name: "a client with the token that reaches a role which does not ask for it says so, once",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const store = await openSqliteStore();
    const token = TOKEN;
    const open = await stateService(store);
    const closed = await stateService(store, token);
    const told: string[] = [];
    const onUnasked = (m: string) => told.push(m);
    const toOpen = new GrpcMetaClient(`127.0.0.1:${open.port}`, { clusterToken: token, onUnasked });
    const toClosed = new GrpcMetaClient(`127.0.0.1:${closed.port}`, {
      clusterToken: token,
      onUnasked,
    });
    try {
      await toClosed.version();
      await toClosed.list("tenant");
      assert.deepEqual(told, [], "a role that asks for it");
      await toOpen.version();
      await toOpen.list("tenant");
      assert.equal(told.length, 1, told.join("\n"));
      assert.match(
        told[0],
        /^the state service at 127\.0\.0\.1:\d+ does not say it asks for the cluster's token \(its INFERX_CLUSTER_TOKEN unset, or a release from before the token\)/,
      );
    } finally {
      toOpen.close();
      toClosed.close();
      await open.stop();
      await closed.stop();
      store.close();
    }
  },
});
