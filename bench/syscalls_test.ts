import assert from "node:assert/strict";
import { parseStat, syscallLines } from "./syscalls.ts";

const STAT = [
  "deno-100,300,,raw_syscalls:sys_enter,2000000000,100.00,,",
  "tokio-runtime-w-101,10,,raw_syscalls:sys_enter,0,100.00,,",
  "tokio-runtime-w-102,2,,raw_syscalls:sys_enter,0,100.00,,",
  "V8 DefaultWorke-103,<not counted>,,raw_syscalls:sys_enter,0,100.00,,",
  "deno-100,100,,syscalls:sys_enter_sendto,2000000000,100.00,,",
  "deno-100,150,,syscalls:sys_enter_recvfrom,2000000000,100.00,,",
  "deno-100,40,,syscalls:sys_enter_epoll_wait,2000000000,100.00,,",
  "tokio-runtime-w-101,10,,syscalls:sys_enter_futex,0,100.00,,",
  "tokio-runtime-w-102,2,,syscalls:sys_enter_futex,0,100.00,,",
  "V8 DefaultWorke-103,<not counted>,,syscalls:sys_enter_futex,0,100.00,,",
].join("\n");

Deno.test("perf stat's counts are read by thread and call, what is not named as other, and put a request", () => {
  const counts = parseStat(STAT);
  assert.deepEqual([...counts.keys()], ["deno-100", "tokio-runtime-w-101", "tokio-runtime-w-102"]);
  assert.deepEqual(Object.fromEntries(counts.get("deno-100")!), {
    sendto: 100,
    recvfrom: 150,
    epoll_wait: 40,
    other: 10,
  });
  assert.deepEqual(syscallLines(counts, 100, 0.1), [
    "deno: 3.00 a request (recvfrom 1.50, sendto 1.00, epoll_wait 0.40, other 0.10)",
    "tokio-runtime-w: 0.12 a request (futex 0.12)",
  ]);
});
