import assert from "node:assert/strict";
import { InferxError } from "../common/errors.ts";
import { OidcVerifier } from "./oidc.ts";
import { Authenticator } from "./auth.ts";
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
    const v = new OidcVerifier({
      jwksUrl: iss.jwksUrl,
      issuer: iss.issuer,
      audience: "inferx",
      refetchMs: 0,
    });
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
    // One signature, one spelling (RFC 7515 base64url): no padding, no `+` or `/`, no spare bits.
    const tail = s.at(-1)!;
    const flipped = "AEIMQUYcgkosw048".includes(tail) // 256 bytes: 342 characters, 4 spare bits
      ? String.fromCharCode(tail.charCodeAt(0) + 1)
      : tail;
    assert.notEqual(flipped, tail, `last character ${tail}`);
    for (
      const sig of [`${s}==`, s.replace(/-/g, "+").replace(/_/g, "/"), s.slice(0, -1) + flipped]
    ) {
      if (sig === s) continue; // no `-` or `_` to spell otherwise
      await rejects(v.verify(`${h}.${p}.${sig}`), /signature is not base64url/);
    }
    await rejects(v.verify(`${h}.${p}=.${s}`), /payload is not base64url/);
    assert.equal((await v.verify(good)).sub, "a", "the token as signed still verifies");
    await rejects(
      v.verify(await iss.sign({ sub: "a", aud: "inferx" }, { header: { crit: ["exp"] } })),
      /critical header extensions/,
    );
    for (const claim of ["nbf", "iat"]) {
      await rejects(
        v.verify(await iss.sign({ sub: "a", aud: "inferx", [claim]: String(now + 600) })),
        new RegExp(`its ${claim} claim is not a number`),
      );
    }
    const proto = `${btoa(JSON.stringify({ alg: "constructor" })).replace(/=+$/, "")}.${p}.${s}`;
    await rejects(v.verify(proto), /algorithm constructor is not accepted/);
    // No kid, and the issuer publishes two keys: which one is not said, now or later (401, not
    // a 503 to try again).
    const noKid = await iss.sign({ sub: "a", aud: "inferx" }, { header: { kid: undefined } });
    for (let i = 0; i < 2; i++) {
      await rejects(v.verify(noKid), /names no key \(kid\).* publishes 2/);
    }
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
    // Generic: the issuer's internal address goes to the log, not to any caller.
    assert.match(err.message, /The identity provider's keys cannot be read now/);
    assert.doesNotMatch(err.message, /127\.0\.0\.1/);
    return true;
  };
  await assert.rejects(v.verify(token), unavailable);
  // Asked again at once, before the keys may be fetched again: still unavailable, not 401.
  await assert.rejects(v.verify(token), unavailable);
});

Deno.test("OidcVerifier: a key the issuer withdraws stops verifying, cached tokens too; a new one is 503 until read", async () => {
  const iss = await startTestIssuer();
  try {
    const v = new OidcVerifier({ jwksUrl: iss.jwksUrl, refreshMs: 100 });
    const auth = new Authenticator({ oidc: v });
    const headers = (t: string) => new Headers({ authorization: `Bearer ${t}` });
    // A token that lives for ten years, signed with the EC key.
    const long = await iss.sign(
      { sub: "u", exp: Math.floor(Date.now() / 1000) + 10 * 365 * 86400 },
      {
        alg: "ES256",
      },
    );
    assert.equal((await auth.authenticate(headers(long))).id, "oidc:u");
    iss.publish(["rsa1"]); // the EC key withdrawn (leaked)
    await new Promise((r) => setTimeout(r, 150));
    // The keys are read again (in the background of the first call after they got old).
    await Promise.resolve(auth.authenticate(headers(long))).catch(() => {});
    await new Promise((r) => setTimeout(r, 200));
    await assert.rejects(
      Promise.resolve(auth.authenticate(headers(long))),
      /no key ec1/,
      "the cached token is checked again against the keys as they are now",
    );
    // A key published a moment after the last read: 503 to try again, not 401.
    const fresh = new OidcVerifier({ jwksUrl: iss.jwksUrl });
    await fresh.verify(await iss.sign({ sub: "a" })); // read now: rsa1 only
    iss.publish(["rsa1", "ec1"]);
    await assert.rejects(
      fresh.verify(await iss.sign({ sub: "b" }, { alg: "ES256" })),
      (e: InferxError) => e.code === "unavailable" && e.retryable && /try again/.test(e.message),
    );
  } finally {
    await iss.stop();
  }
});
