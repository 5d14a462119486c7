/**
 * The manual holds together: every relative link in README.md and docs/
 * reaches a file, and every `#anchor` a heading of its page (as GitHub
 * makes them); the configuration page names every variable the
 * configuration reads; the README stays short.
 */
import assert from "node:assert/strict";
import { CONFIG_ENV } from "../src/common/config.ts";

const ROOT = new URL("../", import.meta.url).pathname;

/** The text outside fenced code blocks and inline code spans. */
function prose(text: string): string {
  return text.replace(/^```[^\n]*\n[\s\S]*?^```$/gm, "").replace(/`[^`\n]*`/g, "");
}

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes. */
function slug(heading: string): string {
  return heading.trim().toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, "").replace(/\s/g, "-");
}

/** The anchors of a Markdown page, duplicates numbered as GitHub does. */
function anchors(text: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const m of prose(text).matchAll(/^#{1,6}\s+(.+)$/gm)) {
    const base = slug(m[1].replace(/`/g, ""));
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  return out;
}

async function pages(): Promise<string[]> {
  const out = [`${ROOT}README.md`];
  for await (const e of Deno.readDir(`${ROOT}docs`)) {
    if (e.isFile && e.name.endsWith(".md")) out.push(`${ROOT}docs/${e.name}`);
  }
  return out.sort();
}

Deno.test("slug() makes headings into anchors as GitHub does", () => {
  const cases: [string, string][] = [
    ["Objects: registering a function", "objects-registering-a-function"],
    ["node.json", "nodejson"],
    ["Cold start, resume and warm", "cold-start-resume-and-warm"],
    ["The GPU worker and its benchmark", "the-gpu-worker-and-its-benchmark"],
    ["FuncPolicy", "funcpolicy"],
  ];
  for (const [heading, want] of cases) assert.equal(slug(heading), want);
});

Deno.test("every relative link in README.md and docs/ reaches a file, and each #anchor a heading", async () => {
  const broken: string[] = [];
  let checked = 0;
  for (const page of await pages()) {
    const text = await Deno.readTextFile(page);
    const dir = page.slice(0, page.lastIndexOf("/") + 1);
    for (const m of prose(text).matchAll(/\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
      const target = m[1];
      if (/^[a-z]+:/i.test(target)) continue; // http:, https:, mailto:
      checked++;
      const [path, anchor] = target.split("#", 2);
      const file = path ? new URL(path, `file://${dir}`).pathname : page;
      const where = `${page.slice(ROOT.length)}: ${target}`;
      let text: string | undefined;
      try {
        const stat = await Deno.stat(file);
        if (stat.isFile && file.endsWith(".md")) text = await Deno.readTextFile(file);
      } catch {
        broken.push(`${where} (no such file)`);
        continue;
      }
      if (anchor !== undefined && !(text && anchors(text).has(anchor))) {
        broken.push(`${where} (no such heading)`);
      }
    }
  }
  assert.ok(checked > 30, `found only ${checked} links: the parser is broken`);
  assert.deepEqual(broken, []);
});

Deno.test("docs/configuration.md names every variable the configuration reads", async () => {
  const text = await Deno.readTextFile(`${ROOT}docs/configuration.md`);
  const missing = CONFIG_ENV.filter((name) => !text.includes(`\`${name}\``));
  assert.deepEqual(missing, []);
});

Deno.test("the README stays a short front page (at most 200 lines)", async () => {
  const lines = (await Deno.readTextFile(`${ROOT}README.md`)).split("\n").length;
  assert.ok(lines <= 200, `README.md has ${lines} lines`);
});
