import assert from "node:assert/strict";
import { readConfig } from "../common/config.ts";
import type { MetaClient } from "../rpc/types.ts";
import { gatewayOptions, nodeAgentConfig } from "./_shared.ts";

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
  assert.deepEqual(ofFour.spill, {
    dir: "/var/lib/inferx/gateway-spill",
    limit: 256 * 1024 * 1024,
  });
});
