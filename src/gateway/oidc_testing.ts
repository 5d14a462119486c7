/**
 * A small OIDC issuer for tests: an RSA and an EC signing key, their JWKS
 * served on 127.0.0.1, and a signer for tokens with any claims.
 *
 * @module
 */

/** A running test issuer. */
export interface TestIssuer {
  jwksUrl: string;
  issuer: string;
  /**
   * Signs `claims` (with `exp` an hour ahead unless given) as RS256, or ES256;
   * `header`: fields of the token's header besides (or instead of: `undefined` drops one).
   */
  sign(
    claims: Record<string, unknown>,
    opts?: { alg?: "RS256" | "ES256"; kid?: string; header?: Record<string, unknown> },
  ): Promise<string>;
  /** How many times the JWKS was fetched. */
  fetches(): number;
  /** Serves only the keys `kids` from now on (a key withdrawn, or none). */
  publish(kids: string[]): void;
  stop(): Promise<void>;
}

const b64url = (bytes: Uint8Array) =>
  btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
const b64urlJson = (v: unknown) => b64url(new TextEncoder().encode(JSON.stringify(v)));

/** Starts the issuer. */
export async function startTestIssuer(): Promise<TestIssuer> {
  const rsa = await crypto.subtle.generateKey(
    {
      name: "RSASSA-PKCS1-v1_5",
      modulusLength: 2048,
      publicExponent: new Uint8Array([1, 0, 1]),
      hash: "SHA-256",
    },
    true,
    ["sign", "verify"],
  );
  const ec = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
    "sign",
    "verify",
  ]);
  const keys = [
    {
      ...await crypto.subtle.exportKey("jwk", rsa.publicKey),
      kid: "rsa1",
      alg: "RS256",
      use: "sig",
    },
    { ...await crypto.subtle.exportKey("jwk", ec.publicKey), kid: "ec1", alg: "ES256", use: "sig" },
  ];
  let fetches = 0;
  let served = keys;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => {
    fetches++;
    return Response.json({ keys: served });
  });
  const issuer = "http://127.0.0.1/realms/inferx";
  return {
    jwksUrl: `http://127.0.0.1:${server.addr.port}/certs`,
    issuer,
    async sign(claims, opts = {}) {
      const alg = opts.alg ?? "RS256";
      const header = {
        alg,
        typ: "JWT",
        kid: opts.kid ?? (alg === "RS256" ? "rsa1" : "ec1"),
        ...opts.header,
      };
      const body = { iss: issuer, exp: Math.floor(Date.now() / 1000) + 3600, ...claims };
      const input = `${b64urlJson(header)}.${b64urlJson(body)}`;
      const sig = alg === "RS256"
        ? await crypto.subtle.sign(
          "RSASSA-PKCS1-v1_5",
          rsa.privateKey,
          new TextEncoder().encode(input),
        )
        : await crypto.subtle.sign(
          { name: "ECDSA", hash: "SHA-256" },
          ec.privateKey,
          new TextEncoder().encode(input),
        );
      return `${input}.${b64url(new Uint8Array(sig))}`;
    },
    fetches: () => fetches,
    publish(kids) {
      served = keys.filter((k) => kids.includes(k.kid));
    },
    stop: () => server.shutdown(),
  };
}
