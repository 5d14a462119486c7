import assert from "node:assert/strict";
import { freePort } from "../src/common/net.ts";
import { startNginx } from "./nginx.ts";
import { hasCommand } from "./wrk.ts";

const noNginx = !(await hasCommand("nginx"));
if (noNginx) {
  console.log("skipping the nginx baseline's test: no nginx (apt-get install nginx-light)");
}

Deno.test({
  name: "the nginx baseline balances over every upstream it is given",
  ignore: noNginx,
  async fn() {
    const hits = [0, 0];
    const servers = hits.map((_, k) =>
      Deno.serve({ hostname: "127.0.0.1", port: freePort(), onListen() {} }, () => {
        hits[k]++;
        return new Response("ok");
      })
    );
    const nginx = await startNginx(
      servers.map((s) => `127.0.0.1:${s.addr.port}`),
      1,
    );
    try {
      for (let i = 0; i < 8; i++) {
        const res = await fetch(`${nginx.url}/v1/completions`, { method: "POST", body: "{}" });
        assert.equal(await res.text(), "ok");
      }
      assert.equal(hits[0] + hits[1], 8);
      assert.ok(hits[0] > 0 && hits[1] > 0, `both upstreams called: ${hits}`);
      assert.ok((await nginx.pids()).length >= 2, "the master and its worker");
    } finally {
      await nginx.stop();
      await Promise.all(servers.map((s) => s.shutdown()));
    }
  },
});
