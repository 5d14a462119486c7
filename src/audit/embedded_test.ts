import assert from "node:assert/strict";
import { EmbeddedAuditBackend } from "./embedded.ts";
import type { PodRow, RequestRow } from "./types.ts";

const pod = (i: number, func = "f"): PodRow => ({
  time: 1000 + i,
  pod: `p${i}`,
  tenant: "t",
  namespace: "n",
  func,
  node: "n1",
  state: "Ready",
});

Deno.test("EmbeddedAuditBackend appends JSON lines and answers newest first, filtered", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const b = new EmbeddedAuditBackend(dir);
    await b.write([], [pod(1), pod(2, "g")]);
    await b.write([], [pod(3)]);
    const rows = await b.query("pods", { tenant: "t", func: "f" });
    assert.deepEqual(rows.map((r) => (r as PodRow).pod), ["p3", "p1"]);
    assert.deepEqual((await b.query("pods", { limit: 1 })).map((r) => (r as PodRow).pod), ["p3"]);
    assert.deepEqual(await b.query("pods", { since: 1003 }), [pod(3)]);
    assert.deepEqual(await b.query("requests", {}), []);
    const text = await Deno.readTextFile(`${dir}/pods.jsonl`);
    assert.equal(text.trim().split("\n").length, 3);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("EmbeddedAuditBackend rotates a full file and still reads the previous one", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const b = new EmbeddedAuditBackend(dir, 150);
    for (let i = 0; i < 6; i++) await b.write([], [pod(i)]);
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(names, ["pods.jsonl", "pods.jsonl.1"]);
    const rows = await b.query("pods", { limit: 100 });
    assert.ok(rows.length >= 2 && rows.length < 6, `kept ${rows.length}`);
    assert.equal((rows[0] as PodRow).pod, "p5");
    await Deno.writeTextFile(`${dir}/pods.jsonl`, '{"cut short', { append: true });
    assert.equal((await b.query("pods", { limit: 1 }))[0].time, 1005, "a torn line is skipped");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("EmbeddedAuditBackend filters request rows by a status range", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const b = new EmbeddedAuditBackend(dir);
    const req = (i: number, status: number): RequestRow => ({
      time: 1000 + i,
      gateway: "g",
      principal: "admin",
      tenant: "t",
      namespace: "n",
      func: "f",
      method: "GET",
      path: "/",
      status,
      latencyMs: 1,
      coldStart: false,
      resumed: false,
    });
    await b.write([req(1, 200), req(2, 503), req(3, 504), req(4, 404)], []);
    const statuses = async (min: number, max: number) =>
      (await b.query("requests", { status: { min, max } })).map((r) => (r as RequestRow).status);
    assert.deepEqual(await statuses(500, 599), [504, 503]);
    assert.deepEqual(await statuses(404, 404), [404]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
