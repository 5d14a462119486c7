import assert from "node:assert/strict";
import { readEnv } from "./config.ts";

const envOf = (vars: Record<string, string>) => (k: string) => vars[k];

Deno.test("readEnv puts AUDITDB_PASSWORD into AUDITDB_ADDR and reads the auth settings", () => {
  const c = readEnv(envOf({
    AUDITDB_ADDR: "postgres://inferx@db:5432/inferx",
    AUDITDB_PASSWORD: "p@ss/word",
    INFERX_ADMIN_APIKEY: "k".repeat(20),
    INFERX_OIDC_JWKS_URL: "http://127.0.0.1:8080/certs",
    INFERX_OIDC_AUDIENCE: "inferx",
  }));
  assert.equal(c.auditDbAddr, "postgres://inferx:p%40ss%2Fword@db:5432/inferx");
  assert.equal(c.adminApiKey, "k".repeat(20));
  assert.deepEqual(c.oidc, {
    jwksUrl: "http://127.0.0.1:8080/certs",
    issuer: undefined,
    audience: "inferx",
  });
  assert.equal(c.auditBufferRows, 100_000);
  const bare = readEnv(envOf({}));
  assert.equal(bare.auditDbAddr, undefined);
  assert.equal(bare.adminApiKey, undefined);
  assert.equal(bare.oidc, undefined);
  assert.throws(
    () => readEnv(envOf({ AUDITDB_ADDR: "not a url", AUDITDB_PASSWORD: "x" })),
    /Invalid AUDITDB_ADDR/,
  );
});

Deno.test("readEnv() reads the embedded audit's retention, 30 days and 1024 MiB by default", () => {
  const bare = readEnv(envOf({}));
  assert.deepEqual([bare.auditRetainDays, bare.auditRetainMB], [30, 1024]);
  const set = readEnv(envOf({ AUDIT_RETAIN_DAYS: "7", AUDIT_RETAIN_MB: "0" }));
  assert.deepEqual([set.auditRetainDays, set.auditRetainMB], [7, 0]);
  assert.throws(() => readEnv(envOf({ AUDIT_RETAIN_MB: "-1" })), /Invalid AUDIT_RETAIN_MB/);
});
