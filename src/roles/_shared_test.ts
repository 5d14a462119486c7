import assert from "node:assert/strict";
import { readConfig } from "../common/config.ts";
import type { MetaClient } from "../rpc/types.ts";
import { gatewayOptions, isLoopback, nodeAgentConfig, Started } from "./_shared.ts";

Deno.test("each installation has an id of its own, kept across restarts, for its containers' scope", async () => {
  const dirs = [await Deno.makeTempDir(), await Deno.makeTempDir()];
  try {
    const ids: string[] = [];
    for (const dir of dirs) {
      const config = readConfig((k) => k === "INFERX_DATA_DIR" ? dir : undefined);
      const first = await nodeAgentConfig(config, {} as MetaClient);
      const again = await nodeAgentConfig(config, {} as MetaClient);
      assert.match(first.installId!, /^[0-9a-f]{16}$/);
      assert.equal(again.installId, first.installId, "kept in the data directory");
      assert.equal(first.scope, `${first.node.name}@${await Deno.realPath(dir)}`);
      ids.push(first.installId!);
    }
    assert.notEqual(ids[0], ids[1]);
  } finally {
    for (const dir of dirs) await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("what answers may hold read ahead is the gateway's as a whole: each of a group's processes takes its share", () => {
  const env: Record<string, string> = {
    GATEWAY_READ_AHEAD_MB: "64",
    GATEWAY_SPILL_MB: "1024",
    INFERX_DATA_DIR: "/var/lib/inferx",
  };
  const config = readConfig((k) => env[k]);
  const one = gatewayOptions(config);
  assert.equal(one.readAheadBytes, 64 * 1024 * 1024);
  assert.deepEqual(one.spill, { dir: "/var/lib/inferx/gateway-spill", limit: 1024 * 1024 * 1024 });
  const ofFour = gatewayOptions(config, 4);
  assert.equal(ofFour.readAheadBytes, 16 * 1024 * 1024);
  assert.equal(ofFour.bodyBufferBytes, 64 * 1024 * 1024);
  assert.deepEqual(ofFour.spill, {
    dir: "/var/lib/inferx/gateway-spill",
    limit: 256 * 1024 * 1024,
  });
  // Past as many processes as the budget holds shares of one body (16 MiB), each keeps one: an
  // even share refused, for good, a body that one process takes. Read ahead is never refused
  // (past its budget an answer is read as its caller takes it): even shares, the total kept.
  const ofThirtyTwo = gatewayOptions(config, 32);
  assert.equal(ofThirtyTwo.bodyBufferBytes, 16 * 1024 * 1024);
  assert.equal(ofThirtyTwo.readAheadBytes, 2 * 1024 * 1024);
  assert.equal(ofThirtyTwo.spill?.limit, 32 * 1024 * 1024);
  // A budget below one body stays the budget.
  const small = readConfig((k) =>
    ({ ...env, INFERX_BODY_BUFFER_MB: "4" } as Record<string, string>)[k]
  );
  assert.equal(gatewayOptions(small, 8).bodyBufferBytes, 4 * 1024 * 1024);
});

Deno.test("Started stops what a failed start had started, newest first, and the error goes on", async () => {
  const stopped: string[] = [];
  const started = new Started();
  await assert.rejects(
    started.run(async (on) => {
      on.add("store", (s) => stopped.push(s));
      on.add("agent", async (s) => {
        await new Promise((r) => setTimeout(r, 5));
        stopped.push(s);
      });
      on.add("broken", () => {
        throw new Error("its stop fails: the others still stop");
      });
      await Promise.resolve();
      throw new Error("port taken");
    }),
    /port taken/,
  );
  assert.deepEqual(stopped, ["agent", "store"]);
  // Stopped once: a later stop finds nothing left.
  await started.stop();
  assert.deepEqual(stopped, ["agent", "store"]);
  // A start that succeeds keeps what it started until the role's stop.
  const ok = new Started();
  assert.equal(await ok.run((on) => Promise.resolve(on.add(7, (n) => stopped.push(`n${n}`)))), 7);
  assert.deepEqual(stopped, ["agent", "store"]);
  await ok.stop();
  assert.deepEqual(stopped, ["agent", "store", "n7"]);
});

Deno.test("a role bound to the loopback alone is not warned about its open gRPC port; any other is", () => {
  for (const h of ["127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]", "LOCALHOST"]) {
    assert.ok(isLoopback(h), h);
  }
  for (const h of ["0.0.0.0", "::", "10.0.0.5", "node-1.cluster", "127.0.0.1.nip.io", "[::]"]) {
    assert.ok(!isLoopback(h), h);
  }
});
