import assert from "node:assert/strict";
import { Registry } from "prom-client";
import { createSchedulerApp } from "./http.ts";
import type { SchedulerService } from "./service.ts";

const snapshot = { nodes: [], pods: [{ id: "p-1", func: "t/n/f", node: "n1", state: "Ready" }] };

function app(leads: boolean, adminApiKey?: string, authEnabled?: boolean, metricsKey?: string) {
  const registry = new Registry();
  registry.setDefaultLabels({});
  const leader = { snapshot: () => snapshot } as unknown as SchedulerService;
  return createSchedulerApp({
    id: "sched-1",
    leader: () => leads ? leader : undefined,
    registry,
    adminApiKey,
    authEnabled,
    metricsKey,
  });
}

Deno.test("the scheduler's /health says whether the replica leads", async () => {
  for (const leads of [false, true]) {
    const res = await app(leads).request("/health");
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { status: "ok", id: "sched-1", leader: leads });
  }
});

Deno.test("the scheduler's /state shows the leader's accounting, and 503 on other replicas", async () => {
  const res = await app(true).request("/state");
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { id: "sched-1", ...snapshot });
  const other = await app(false).request("/state");
  assert.equal(other.status, 503);
  assert.deepEqual(await other.json(), {
    error: { code: "unavailable", message: "Scheduler sched-1 is not the leader" },
  });
});

Deno.test("the scheduler serves /metrics as Prometheus text, and a JSON 404 elsewhere", async () => {
  const res = await app(true).request("/metrics");
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type")!, /^text\/plain/);
  await res.body?.cancel();
  const none = await app(true).request("/nope");
  assert.equal(none.status, 404);
  assert.deepEqual(await none.json(), {
    error: { code: "not_found", message: "No route for /nope" },
  });
});

Deno.test("with an admin key, the scheduler's /state and /metrics need it; /health stays open", async () => {
  const a = app(true, "s3cret");
  assert.equal((await a.request("/health")).status, 200);
  for (const path of ["/state", "/metrics"]) {
    const none = await a.request(path);
    assert.equal(none.status, 401, path);
    assert.match((await none.json()).error.message, /Credentials required/);
    const wrong = await a.request(path, { headers: { authorization: "Bearer nope" } });
    assert.equal(wrong.status, 401, path);
    await wrong.body?.cancel();
    const both: Record<string, string>[] = [{ authorization: "Bearer s3cret" }, {
      "x-api-key": "s3cret",
    }];
    for (const headers of both) {
      const ok = await a.request(path, { headers });
      assert.equal(ok.status, 200, path);
      await ok.body?.cancel();
    }
  }
});

Deno.test("with auth on by OIDC alone (no admin key), the scheduler's /state and /metrics are closed", async () => {
  const a = app(true, undefined, true);
  assert.equal((await a.request("/health")).status, 200);
  for (const path of ["/state", "/metrics"]) {
    const r = await a.request(path, { headers: { authorization: "Bearer some.oidc.token" } });
    assert.equal(r.status, 401, path);
    assert.equal(r.headers.get("www-authenticate"), 'Bearer realm="inferx"');
    assert.match((await r.json()).error.message, /needs the admin key.*INFERX_ADMIN_APIKEY/);
  }
});

Deno.test("the metrics key opens the scheduler's /metrics and nothing else", async () => {
  for (
    const a of [app(true, "s3cret", true, "scrape-only"), app(true, undefined, true, "scrape-only")]
  ) {
    const headers = { authorization: "Bearer scrape-only" };
    const metrics = await a.request("/metrics", { headers });
    assert.equal(metrics.status, 200);
    await metrics.body?.cancel();
    const state = await a.request("/state", { headers });
    assert.equal(state.status, 401, "the accounting is the admin's");
    await state.body?.cancel();
  }
  // With OIDC alone, what it asks for is said to be no one's to send.
  const oidc = await app(true, undefined, true, "scrape-only").request("/state");
  assert.match(
    (await oidc.json()).error.message,
    /needs the admin key, and this scheduler has none/,
  );
});
