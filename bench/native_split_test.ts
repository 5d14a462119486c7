import assert from "node:assert/strict";
import { NO_JS, splitLine, splitPerfScript, topCallers } from "./native_split.ts";

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
    { samples: s.samples, kernel: s.kernel, native: s.native, generated: s.generated },
    { samples: 5, kernel: 1, native: 3, generated: 1 },
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
    "kernel 20.0%, runtime native 60.0%, generated code (JS, wasm, builtins) 20.0%; 5 samples",
  );
  assert.deepEqual(
    splitLine(s, 50),
    "kernel 10.0 µs (20.0%), runtime native 30.0 µs (60.0%), " +
      "generated code (JS, wasm, builtins) 10.0 µs (20.0%); 5 samples",
  );
});

Deno.test("splitPerfScript of nothing is empty", () => {
  const s = splitPerfScript("");
  assert.deepEqual([s.samples, s.nativeBy.size], [0, 0]);
  assert.deepEqual(
    splitLine(s),
    "kernel 0.0%, runtime native 0.0%, generated code (JS, wasm, builtins) 0.0%; 0 samples",
  );
});
