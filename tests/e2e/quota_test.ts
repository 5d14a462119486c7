/**
 * Tenant quotas end to end: `max_functions` and `max_gpu` refuse a function
 * at registration, `max_replica` refuses a call that would start one replica
 * too many; each with 429 and a message naming the limit.
 */
import assert from "node:assert/strict";
import { ngramFunction, putObject, request, startPlatform } from "./helpers.ts";

const fn = (name: string, gpus = 0) =>
  ngramFunction("small", "ns", name, {
    resources: { CPU: 300, Mem: 256, GPU: { Count: gpus, vRam: gpus ? 1000 : 0 } },
    policy: { Obj: { scalein_timeout: 60, standby_per_node: 0 } },
  });

Deno.test({
  name: "quotas: max_functions, max_gpu and max_replica answer 429 naming the limit",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const p = await startPlatform();
    try {
      const tenant = {
        type: "tenant",
        tenant: "system",
        namespace: "system",
        name: "small",
        object: { spec: { quota: { max_functions: 2, max_gpu: 0, max_replica: 1 } } },
      };
      assert.equal((await putObject(p.url, tenant)).status, 201);
      const badQuota = await putObject(p.url, {
        ...tenant,
        name: "bad",
        object: { spec: { quota: { max_gpu: -1 } } },
      });
      assert.equal(badQuota.status, 400);
      assert.match(badQuota.body.error.message, /quota\.max_gpu/);
      assert.equal(
        (await putObject(p.url, {
          type: "namespace",
          tenant: "small",
          namespace: "system",
          name: "ns",
          object: {},
        })).status,
        201,
      );
      const gpu = await putObject(p.url, fn("gpu", 1));
      assert.equal(gpu.status, 429, JSON.stringify(gpu.body));
      assert.equal(gpu.body.error.code, "quota_exceeded");
      assert.match(gpu.body.error.message, /max_gpu is 0/);
      assert.deepEqual(gpu.body.error.details, { limit: "max_gpu", quota: 0 });
      assert.equal((await putObject(p.url, fn("a"))).status, 201);
      assert.equal((await putObject(p.url, fn("b"))).status, 201);
      const third = await putObject(p.url, fn("c"));
      assert.equal(third.status, 429);
      assert.match(third.body.error.message, /Tenant small quota max_functions is 2/);

      const call = (name: string) =>
        request(`${p.url}/funccall/small/ns/${name}/v1/completions`, {
          body: { prompt: "The", max_tokens: 4 },
        });
      assert.equal((await call("a")).status, 200);
      const b = await call("b");
      assert.equal(b.status, 429, JSON.stringify(b.body));
      assert.match(b.body.error.message, /tenant small is at its max_replica quota \(1 running\)/);
      // Which limit, and its value, as the state service's refusals say.
      assert.deepEqual(b.body.error.details, { limit: "max_replica", quota: 1 });

      // Raising the quota takes effect without a restart.
      const cur = await request(`${p.url}/object/tenant/system/system/small`);
      const raised = await request(`${p.url}/object/`, {
        body: {
          ...tenant,
          revision: cur.body.revision,
          object: { spec: { quota: { max_functions: 2, max_gpu: 0, max_replica: 2 } } },
        },
      });
      assert.equal(raised.status, 200, JSON.stringify(raised.body));
      let ok = 0;
      for (let i = 0; i < 50 && ok === 0; i++) {
        if ((await call("b")).status === 200) ok++;
        else await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(ok, 1, "b runs once the quota allows two replicas");
    } finally {
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
    }
  },
});
