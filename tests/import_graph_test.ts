/**
 * Guards the architecture: roles meet only through client interfaces, the
 * gateway never touches store code, and the scheduler core does no I/O and
 * reads no clock. Test files and test helpers (`testing.ts`) are exempt: they
 * wire real parts together.
 */
import assert from "node:assert/strict";

const SRC = new URL("../src/", import.meta.url).pathname;
const IMPORT_RE = /(?:import|export)\s[^;]*?from\s+"([^"]+)"|import\(\s*"([^"]+)"\s*\)/g;

async function sourceFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory) out.push(...await sourceFiles(p));
    else if (/\.tsx?$/.test(e.name) && !/_test\.tsx?$/.test(e.name) && e.name !== "testing.ts") {
      out.push(p);
    }
  }
  return out;
}

/** Files under `src/<area>` and the `src/` areas each imports. */
async function importsOf(area: string): Promise<Map<string, Set<string>>> {
  const result = new Map<string, Set<string>>();
  for (const file of await sourceFiles(`${SRC}${area}`)) {
    const text = await Deno.readTextFile(file);
    const targets = new Set<string>();
    for (const m of text.matchAll(IMPORT_RE)) {
      const spec = m[1] ?? m[2];
      if (!spec.startsWith(".")) {
        targets.add(`pkg:${spec}`);
        continue;
      }
      const abs = new URL(spec, `file://${file}`).pathname;
      if (abs.startsWith(SRC)) targets.add(abs.slice(SRC.length));
    }
    result.set(file.slice(SRC.length), targets);
  }
  return result;
}

const FORBIDDEN: Record<string, string[]> = {
  gateway: ["scheduler/", "nodeagent/", "statesvc/", "store/", "pkg:npm:etcd3"],
  scheduler: ["gateway/", "nodeagent/", "statesvc/", "store/"],
  nodeagent: ["gateway/", "scheduler/", "statesvc/", "store/"],
  statesvc: ["gateway/", "scheduler/", "nodeagent/"],
  // The dashboard's views and events are the gateway's: they see the cluster through MetaClient.
  ui: ["gateway/", "scheduler/", "nodeagent/", "statesvc/", "store/", "pkg:npm:etcd3"],
};

for (const [role, banned] of Object.entries(FORBIDDEN)) {
  Deno.test(`the ${role} role imports no other role's code`, async () => {
    const graph = await importsOf(role);
    const total = [...graph.values()].reduce((n, t) => n + t.size, 0);
    assert.ok(total > 5, `found only ${total} imports under src/${role}: the parser is broken`);
    for (const [file, targets] of graph) {
      for (const t of targets) {
        const hit = banned.find((b) => t.startsWith(b));
        assert.equal(hit, undefined, `${file} imports ${t}`);
      }
    }
  });
}

Deno.test("the scheduler core imports only itself and the model, and does no I/O", async () => {
  for (const [file, targets] of await importsOf("scheduler/core")) {
    for (const t of targets) {
      assert.ok(t.startsWith("scheduler/core/") || t.startsWith("model/"), `${file} imports ${t}`);
    }
    const text = await Deno.readTextFile(`${SRC}${file}`);
    if (file.endsWith("testing.ts")) continue;
    for (
      const banned of [
        "Deno.",
        "Date.now",
        "performance.now",
        "setTimeout",
        "setInterval",
        "fetch(",
        "Math.random",
      ]
    ) {
      assert.ok(!text.includes(banned), `${file} uses ${banned}`);
    }
  }
});

Deno.test("`deno task compile` takes in every module a worker thread runs (a compiled binary has only what it was given)", async () => {
  const tasks = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url))).tasks;
  const included = [...(tasks.compile as string).matchAll(/--include (\S+)/g)].map((m) => m[1]);
  const workers: string[] = [];
  for (const file of await sourceFiles(SRC.replace(/\/$/, ""))) {
    const text = await Deno.readTextFile(file);
    for (const m of text.matchAll(/new Worker\(new URL\("\.\/([^"]+)", import\.meta\.url\)/g)) {
      // Relative to the repository, wherever it is checked out (`/src/inferx`, say).
      const dir = file.slice(SRC.length - "src/".length, file.lastIndexOf("/"));
      workers.push(`${dir}/${m[1]}`);
    }
  }
  assert.ok(workers.length >= 2, `the workers found: ${workers}`);
  for (const w of workers) {
    assert.ok(
      included.some((i) => w === i || w.startsWith(`${i}/`)),
      `${w} is not in the compile task's --include list`,
    );
  }
});
