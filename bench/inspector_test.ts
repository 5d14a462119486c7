import assert from "node:assert/strict";
import { freePort } from "../src/common/net.ts";
import { heapGrowth, Inspector, summarize } from "./inspector.ts";

/** A child process with a web worker and a class of objects to count, under an inspector. */
const CHILD = `
class Held { constructor(i) { this.i = i; } }
globalThis.kept = Array.from({ length: 3000 }, (_, i) => new Held(i));
globalThis.more = (n) => { for (let i = 0; i < n; i++) kept.push(new Held(i)); return kept.length; };
globalThis.litter = () => { globalThis.trash = Array.from({ length: 200000 }, (_, i) => ({ i, s: "x" + i })); };
new Worker("data:application/javascript,globalThis.w=new Array(1000).fill(0);setInterval(()=>{},1000)", { type: "module" });
setInterval(() => {}, 1000);
console.log("ready");
`;

Deno.test("Inspector collects every isolate of a process and counts its objects by kind", async () => {
  const dir = await Deno.makeTempDir({ prefix: "inferx-inspector-" });
  const port = freePort();
  await Deno.writeTextFile(`${dir}/child.js`, CHILD);
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `--inspect=127.0.0.1:${port}`, `${dir}/child.js`],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const out = child.stdout.getReader();
  let inspector: Inspector | undefined;
  try {
    const first = await out.read();
    assert.match(new TextDecoder().decode(first.value), /ready/);
    inspector = await Inspector.connect(port);
    assert.deepEqual(inspector.isolates().map(([name]) => name), ["main", "worker [1]"]);

    const before = await inspector.heapByKind();
    assert.equal(before.get("object: Held")?.count, 3000);
    await inspector.send("Runtime.evaluate", { expression: "more(500)" });
    const after = await inspector.heapByKind();
    assert.equal(after.get("object: Held")?.count, 3500);
    const growth = heapGrowth(before, after, 50);
    const held = growth.find((l) => l.startsWith("| object: Held |"));
    assert.ok(held?.startsWith("| object: Held | 500 | "), held);

    // Garbage made and dropped: a full collection gives it back.
    await inspector.send("Runtime.evaluate", { expression: "litter()" });
    const littered = await inspector.collect();
    await inspector.send("Runtime.evaluate", { expression: "globalThis.trash = null" });
    const cleaned = await inspector.collect();
    assert.deepEqual(cleaned.map((h) => h.isolate), ["main", "worker [1]"]);
    assert.ok(
      littered[0].used - cleaned[0].used > 5 * 1048576,
      `${littered[0].used} -> ${cleaned[0].used}`,
    );
    assert.ok(cleaned[1].used > 0 && cleaned[1].used < cleaned[0].used);
  } finally {
    inspector?.close();
    child.kill("SIGKILL");
    await child.status;
    await out.cancel().catch(() => {});
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("summarize counts a snapshot's objects by constructor and the rest by type", () => {
  const snap = {
    snapshot: {
      meta: {
        node_fields: ["type", "name", "id", "self_size", "edge_count"],
        node_types: [["hidden", "array", "string", "object", "code", "closure"]] as [string[]],
      },
    },
    // type, name, id, self_size, edge_count
    nodes: [3, 0, 1, 32, 0, 3, 0, 2, 40, 0, 2, 1, 3, 24, 0, 5, 2, 4, 64, 0, 1, 3, 5, 16, 0],
    strings: ["Map", "abc", "handler", "(internal array)"],
  };
  const kinds = summarize(snap);
  assert.deepEqual(kinds.get("object: Map"), { count: 2, bytes: 72 });
  assert.deepEqual(kinds.get("string"), { count: 1, bytes: 24 });
  assert.deepEqual(kinds.get("closure: handler"), { count: 1, bytes: 64 });
  assert.deepEqual(kinds.get("array"), { count: 1, bytes: 16 });
});
