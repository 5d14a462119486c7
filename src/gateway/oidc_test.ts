import assert from "node:assert/strict";
import { InferxError } from "../common/errors.ts";
import { OidcVerifier } from "./oidc.ts";
import { startTestIssuer } from "./oidc_testing.ts";

async function rejects(p: Promise<unknown>, re: RegExp) {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof InferxError);
    assert.equal(err.code, "unauthenticated");
    assert.match(err.message, re);
    return true;
  });
}

Deno.test("OidcVerifier accepts RS256 and ES256 tokens and reads Keycloak groups and roles", async () => {
  const iss = await startTestIssuer();
  try {
    const v = new OidcVerifier({ jwksUrl: iss.jwksUrl, issuer: iss.issuer, audience: "inferx" });
    const rs = await iss.sign({
      sub: "alice",
      aud: ["account", "inferx"],
      groups: ["/tenant/admin/acme"],
      realm_access: { roles: ["/namespace/user/beta/prod", "offline_access"] },
    });
    const claims = await v.verify(rs);
    assert.equal(claims.sub, "alice");
    assert.deepEqual(claims.roles, [
      "/tenant/admin/acme",
      "/namespace/user/beta/prod",
      "offline_access",
    ]);
    const es = await iss.sign({ sub: "bob", azp: "inferx" }, { alg: "ES256" });
    assert.equal((await v.verify(es)).sub, "bob");
    assert.equal(iss.fetches(), 1, "keys are fetched once and kept");
  } finally {
    await iss.stop();
  }
});

Deno.test("OidcVerifier refuses bad tokens with the reason", async () => {
  const iss = await startTestIssuer();
  try {
    const now = Math.floor(Date.now() / 1000);
    const v = new OidcVerifier({ jwksUrl: iss.jwksUrl, issuer: iss.issuer, audience: "inferx" });
    const good = await iss.sign({ sub: "a", aud: "inferx" });
    const [h, p, s] = good.split(".");
    await rejects(v.verify("abc"), /not a JWT/);
    await rejects(v.verify(`${h}.${p}.${s.slice(0, -4)}AAAA`), /bad signature/);
    const forged = btoa(JSON.stringify({ sub: "root", aud: "inferx", exp: now + 60 }))
      .replace(/=+$/, "");
    await rejects(v.verify(`${h}.${forged}.${s}`), /bad signature|base64url/);
    await rejects(v.verify(await iss.sign({ sub: "a", aud: "inferx", exp: now - 120 })), /expired/);
    await rejects(v.verify(await iss.sign({ sub: "a", aud: "inferx", nbf: now + 600 })), /nbf/);
    await rejects(v.verify(await iss.sign({ sub: "a", aud: "other" })), /audience/);
    await rejects(v.verify(await iss.sign({ sub: "a", aud: "inferx", iss: "evil" })), /issuer/);
    await rejects(v.verify(await iss.sign({ aud: "inferx" })), /no sub/);
    await rejects(
      v.verify(await iss.sign({ sub: "a", aud: "inferx" }, { kid: "gone" })),
      /no key gone/,
    );
    const none = `${btoa(JSON.stringify({ alg: "none" })).replace(/=+$/, "")}.${p}.`;
    await rejects(v.verify(none), /algorithm none/);
    // An RSA key id with an EC signature: the key's alg decides.
    await rejects(
      v.verify(await iss.sign({ sub: "a", aud: "inferx" }, { alg: "ES256", kid: "rsa1" })),
      /is for RS256/,
    );
  } finally {
    await iss.stop();
  }
});

Deno.test("OidcVerifier reports an unreachable JWKS as unavailable, not as a bad token", async () => {
  const iss = await startTestIssuer();
  const token = await iss.sign({ sub: "a" });
  const url = iss.jwksUrl;
  await iss.stop();
  const v = new OidcVerifier({ jwksUrl: url });
  const unavailable = (err: unknown) => {
    assert.ok(err instanceof InferxError);
    assert.equal(err.code, "unavailable");
    assert.match(err.message, /Cannot read the OIDC keys/);
    return true;
  };
  await assert.rejects(v.verify(token), unavailable);
  // Asked again at once, before the keys may be fetched again: still unavailable, not 401.
  await assert.rejects(v.verify(token), unavailable);
});
