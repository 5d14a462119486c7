import assert from "node:assert/strict";
import { AddressSet, NON_PUBLIC, parseCidrList } from "./cidr.ts";

Deno.test("parseCidrList() reads ranges and single addresses, and names a bad entry", () => {
  assert.deepEqual(parseCidrList("127.0.0.1, 10.0.0.0/8 fd00::/8", "X"), [
    { address: "127.0.0.1", prefix: 32, family: "ipv4" },
    { address: "10.0.0.0", prefix: 8, family: "ipv4" },
    { address: "fd00::", prefix: 8, family: "ipv6" },
  ]);
  assert.deepEqual(parseCidrList("", "X"), []);
  for (const bad of ["10.0.0.0/33", "example.com", "10.0.0.0/8/1", "::1/129", "1.2.3.4/x"]) {
    assert.throws(() => parseCidrList(bad, "INFERX_CALLBACK_ALLOW"), (e: Error) => {
      assert.match(
        e.message,
        new RegExp(`INFERX_CALLBACK_ALLOW: "${bad.replace(/[./]/g, "\\$&")}"`),
      );
      return true;
    });
  }
});

Deno.test("NON_PUBLIC holds loopback, private, link-local and the like, not public addresses", () => {
  const set = new AddressSet(NON_PUBLIC);
  const table: [string, boolean][] = [
    ["127.0.0.1", true],
    ["10.20.30.40", true],
    ["172.16.0.1", true],
    ["172.32.0.1", false],
    ["192.168.1.1", true],
    ["169.254.169.254", true],
    ["100.64.0.1", true],
    ["0.0.0.0", true],
    ["224.0.0.1", true],
    ["::1", true],
    ["::", true],
    ["fe80::1", true],
    ["fd12:3456::1", true],
    ["::ffff:127.0.0.1", true],
    ["::ffff:10.0.0.1", true],
    ["::ffff:0:7f00:1", true], // SIIT form of 127.0.0.1
    ["64:ff9b::a00:1", true], // NAT64 of 10.0.0.1
    ["64:ff9b:1::7f00:1", true], // local-use NAT64
    ["2002:7f00:1::", true], // 6to4 of 127.0.0.1
    ["2001:0:4136:e378::1", true], // Teredo
    ["fec0::1", true], // site-local
    ["8.8.8.8", false],
    ["1.1.1.1", false],
    ["2606:4700:4700::1111", false],
    ["::ffff:8.8.8.8", false],
    ["not an address", false],
  ];
  for (const [address, refused] of table) assert.equal(set.has(address), refused, address);
});
