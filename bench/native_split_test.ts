import assert from "node:assert/strict";
import {
  builtinOffsets,
  JitMap,
  NO_JS,
  splitLine,
  splitPerfScript,
  topBuiltins,
  topCallers,
} from "./native_split.ts";

const EXE = "/usr/local/bin/deno";
const MAP = "/tmp/perf-4242.map";
const cwd = Deno.cwd();

// Four samples, innermost frame first, as `perf script -F ip,sym,dso` prints them.
const SCRIPT = `
\tffffffff8206e8bc tcp_sendmsg ([kernel.kallsyms])
\tffffffff81000130 entry_SYSCALL_64_after_hwframe ([kernel.kallsyms])
\t          10aba4 __send (/usr/lib/x86_64-linux-gnu/libc.so.6)


\t         362187a [unknown] (${EXE})
\t    7f5834210543 Builtin:JsonParse (${MAP})
\t    7f583425b67e JS:*'parsed file://${cwd}/src/gateway/call.ts:166:16 (${MAP})
\t    7f5834210599 JS:+'serve file://${cwd}/src/gateway/http1/server.ts:808:14 (${MAP})
\t         1e6c551 [unknown] (${EXE})

\t         1e6c551 [unknown] (${EXE})
\t         1c126a1 [unknown] (${EXE})

\t     7b60ca3ba82 JS:wasm-function[20]-20-turbofan (${MAP})
\t    7f583425b67e JS:*'#nextHead file://${cwd}/src/gateway/http1/server.ts:561:183 (${MAP})

\t            1234 __vdso_clock_gettime ([vdso])
\t    7f583425b67e JS:~now ext:deno_web/15_performance.js:1:200 (${MAP})
`;

Deno.test("splitPerfScript sorts samples by the kind of code they ran in", () => {
  const s = splitPerfScript(SCRIPT);
  assert.deepEqual(
    {
      samples: s.samples,
      kernel: s.kernel,
      native: s.native,
      builtin: s.builtin,
      generated: s.generated,
    },
    { samples: 5, kernel: 1, native: 3, builtin: 0, generated: 1 },
  );
});

Deno.test("native samples go to the innermost JavaScript function on their stack", () => {
  const s = splitPerfScript(SCRIPT);
  assert.deepEqual(Object.fromEntries(s.nativeBy), {
    "parsed src/gateway/call.ts:166": 1,
    [NO_JS]: 1,
    "now ext:deno_web/15_performance.js:1": 1,
  });
  assert.deepEqual(topCallers(s, 1).length, 1);
  assert.deepEqual(topCallers(s, 5)[0], "20.0% parsed src/gateway/call.ts:166");
});

Deno.test("splitLine gives shares, and µs a request when the thread's cost is known", () => {
  const s = splitPerfScript(SCRIPT);
  assert.deepEqual(
    splitLine(s),
    "kernel 20.0%, runtime native 60.0%, V8 builtins and interpreter 0.0%, " +
      "generated code (JS, wasm) 20.0%; 5 samples",
  );
  assert.deepEqual(
    splitLine(s, 50),
    "kernel 10.0 µs (20.0%), runtime native 30.0 µs (60.0%), " +
      "V8 builtins and interpreter 0.0 µs (0.0%), generated code (JS, wasm) 10.0 µs (20.0%); " +
      "5 samples",
  );
});

Deno.test("splitPerfScript of nothing is empty", () => {
  const s = splitPerfScript("");
  assert.deepEqual([s.samples, s.nativeBy.size], [0, 0]);
  assert.deepEqual(
    splitLine(s),
    "kernel 0.0%, runtime native 0.0%, V8 builtins and interpreter 0.0%, " +
      "generated code (JS, wasm) 0.0%; 0 samples",
  );
});

// V8's map as --perf-basic-prof writes it, oldest first: a library's start-up code, freed,
// then code made under load at its addresses.
const JIT = [
  "7f5834210000 2b64 JS:+'core.$constructor.~standard file:///lib/zod/schemas.js:8:69",
  "7f5834300000 100 JS:^'keep file:///lib/keep.js:1:1",
  "7f5834210000 fd0 JS:*'#apply file:///repo/src/gateway/http1/server.ts:474:97",
  "7f58342110c0 e90 JS:*'#apply file:///repo/src/gateway/http_pool.ts:151:96",
  "",
].join("\n");

Deno.test("JitMap names an address by the code made there last", () => {
  const m = new JitMap(JIT);
  assert.equal(
    m.name(0x7f5834210b77n),
    "JS:*'#apply file:///repo/src/gateway/http1/server.ts:474:97",
  );
  assert.equal(m.name(0x7f5834211ee5n), "JS:*'#apply file:///repo/src/gateway/http_pool.ts:151:96");
  // The rest of the freed code's range is not named after it.
  assert.equal(m.name(0x7f5834212100n), undefined);
  assert.equal(m.name(0x7f5834300000n), "JS:^'keep file:///lib/keep.js:1:1");
  assert.equal(m.name(0x7f58343000ffn), "JS:^'keep file:///lib/keep.js:1:1");
  assert.equal(m.name(0x7f5834300100n), undefined); // one past its end
  assert.equal(m.name(0x7f583420ffffn), undefined);
  assert.equal(new JitMap("").name(0x7f5834210000n), undefined);
});

Deno.test("an entry that overlaps several older ones drops them all", () => {
  const m = new JitMap(
    ["1000 100 JS:a", "1100 100 JS:b", "1200 100 JS:c", "10f0 110 JS:new"].join("\n"),
  );
  assert.equal(m.name(0x1000n), undefined); // a overlapped at its end: dropped whole
  assert.equal(m.name(0x10f0n), "JS:new");
  assert.equal(m.name(0x1180n), "JS:new");
  assert.equal(m.name(0x1200n), "JS:c"); // c starts at new's end (0x1200): kept
});

Deno.test("splitPerfScript names generated frames from the map when given one", () => {
  const script = `
\t         362187a [unknown] (${EXE})
\t    7f5834210b77 JS:+'core.$constructor.~standard file:///lib/zod/schemas.js:8:69 (${MAP})
\t    7f583425b67e JS:*'serve file://${cwd}/src/gateway/http1/server.ts:808:14 (${MAP})
`;
  assert.deepEqual(Object.fromEntries(splitPerfScript(script).nativeBy), {
    "core.$constructor.~standard file:///lib/zod/schemas.js:8": 1,
  });
  assert.deepEqual(Object.fromEntries(splitPerfScript(script, new JitMap(JIT)).nativeBy), {
    "#apply file:///repo/src/gateway/http1/server.ts:474": 1,
  });
});

Deno.test("the executable's builtins and bytecode handlers, named by the map, count apart", () => {
  const jit = new JitMap([
    "7f5393dc0000 400 Builtin:JsonParse",
    "7f5393dc0400 100 BytecodeHandler:LdaNamedProperty",
    "7f583425b600 100 JS:*'parsed file:///repo/src/gateway/call.ts:166:16",
  ].join("\n"));
  // The blob mapped again from the executable's offset 0x35cf000 (perf gives such frames by it).
  const maps = [
    `55a0b178a000-55a0b547e000 r-xp 01b8e000 fe:00 1441955                    ${EXE}`,
    `7f5393dc0000-7f5393fe6000 r-xp 035cf000 fe:00 1441955                    ${EXE}`,
    "7f583425b000-7f583425c000 rwxp 00000000 00:00 0 ",
  ].join("\n");
  const builtins = builtinOffsets(jit, maps);
  assert.deepEqual([...builtins.entries()], [
    [0x35cf000n, 0x400n, "Builtin:JsonParse"],
    [0x35cf400n, 0x100n, "BytecodeHandler:LdaNamedProperty"],
  ]);
  const script = `
\t         35cf010 [unknown] (${EXE})
\t    7f583425b67e [unknown] (${MAP})

\t         35cf420 [unknown] (${EXE})
\t    7f583425b67e [unknown] (${MAP})

\t         35cf020 [unknown] (${EXE})

\t         362187a [unknown] (${EXE})
\t         35cf010 [unknown] (${EXE})
\t    7f583425b67e [unknown] (${MAP})
`;
  const s = splitPerfScript(script, jit, builtins);
  assert.deepEqual([s.samples, s.native, s.builtin, s.generated], [4, 1, 3, 0]);
  assert.deepEqual(Object.fromEntries(s.builtinBy), {
    "Builtin:JsonParse": 2,
    "BytecodeHandler:LdaNamedProperty": 1,
  });
  // The C++ the builtin called is charged to the JavaScript beneath both.
  assert.deepEqual(Object.fromEntries(s.nativeBy), {
    "parsed file:///repo/src/gateway/call.ts:166": 1,
  });
  assert.deepEqual(topBuiltins(s, 1), ["50.0% Builtin:JsonParse"]);
  // Without the offsets, they are the executable's native code.
  const plain = splitPerfScript(script, jit);
  assert.deepEqual([plain.native, plain.builtin], [4, 0]);
});
