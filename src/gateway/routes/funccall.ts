/**
 * `ANY /funccall/{tenant}/{namespace}/{function}/{path}`: calls the
 * function's worker at `/{path}`. This is the Hono form of the call; the raw
 * listener (`server.ts`) serves the same calls on its warm path with the same
 * steps (`call.ts`, `proxy.ts`).
 *
 * @module
 */
import { Hono } from "hono";
import { NotFoundError } from "../../common/errors.ts";
import { funccallInput, parseFunccallPath, requestCall } from "../call.ts";
import { forward } from "../proxy.ts";
import type { GatewayEnv, RouteDeps } from "../types.ts";
import { callResponse, signalSource } from "./_call.ts";

/** The call routes, mounted at `/funccall`. */
export function funccallRoutes(deps: RouteDeps): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>();
  const ctx = {
    cache: deps.cache,
    bodyLimit: deps.bodyLimit,
    authEnabled: deps.auth.enabled,
    probe: deps.jsonProbe,
    auth: deps.auth,
  };
  app.all("/*", async (c) => {
    const url = new URL(c.req.url);
    const call = parseFunccallPath(url.pathname + url.search);
    if (!call) {
      throw new NotFoundError(
        `No route for ${c.req.method} ${url.pathname}: use /funccall/{tenant}/{namespace}/{function}/{path}`,
      );
    }
    const rec = c.var.call;
    const req = c.req.raw;
    const input = await funccallInput(
      ctx,
      c.var.principal,
      requestCall(req, deps.bodyBudget),
      call.target,
      call.path,
      rec.t0,
      (t, k) => rec.setTarget(t, k),
    );
    const answer = await forward(deps, input, signalSource(req.signal));
    rec.answered(answer);
    return callResponse(answer, rec, req.signal);
  });
  return app;
}
