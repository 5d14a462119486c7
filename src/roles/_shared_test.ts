import assert from "node:assert/strict";
import { readConfig } from "../common/config.ts";
import type { MetaClient } from "../rpc/types.ts";
import { nodeAgentConfig } from "./_shared.ts";

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
