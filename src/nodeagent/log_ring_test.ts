import assert from "node:assert/strict";
import { LogRing, MAX_LINE } from "./log_ring.ts";

Deno.test("LogRing keeps the last lines, a line spanning chunks joined", () => {
  const r = new LogRing(3);
  r.push("one\ntw");
  r.push("o\nthree\nfou");
  assert.equal(r.tail(10), "one\ntwo\nthree\nfou", "the unfinished line shown too");
  r.push("r\nfive\n");
  assert.equal(r.tail(2), "four\nfive");
});

Deno.test("LogRing keeps the end of a line that never ends (a redrawn progress bar), bounded", () => {
  const r = new LogRing();
  // 8 MiB of a bar redrawn with \r, in 1 KiB chunks, never a newline.
  const chunk = "\r[=====>    ] 50% ".repeat(57).slice(0, 1024);
  for (let i = 0; i < 8192; i++) r.push(chunk);
  const tail = r.tail(1);
  assert.ok(tail.length <= MAX_LINE);
  assert.ok(tail.endsWith(chunk.slice(-100)));
  r.push(" done\nnext");
  const [bar, next] = r.tail(2).split("\n");
  assert.ok(bar.endsWith(" done") && bar.length <= MAX_LINE);
  assert.equal(next, "next");
});
