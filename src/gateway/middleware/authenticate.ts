/**
 * Who is calling: the `authenticate(auth)` middleware turns a request's
 * credentials into a {@linkcode Principal} (`c.var.principal`) or answers
 * 401; routes then `authorize()` what they do. It also notes when the
 * request arrived (`c.var.t0`).
 *
 * @module
 */
import type { MiddlewareHandler } from "hono";
import type { Authenticator } from "../auth.ts";
import type { GatewayVars } from "./observe.ts";

/** Sets `c.var.principal` from the request's credentials (401 on bad ones). */
export function authenticate(auth: Authenticator): MiddlewareHandler<{ Variables: GatewayVars }> {
  return async function authenticate(c, next) {
    if (c.var.t0 === undefined) c.set("t0", performance.now());
    const p = auth.authenticate(c.req.raw.headers);
    const principal = p instanceof Promise ? await p : p;
    c.set("principal", principal);
    if (c.var.call) c.var.call.principal = principal.id;
    await next();
  };
}
