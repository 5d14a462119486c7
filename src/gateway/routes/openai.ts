/**
 * OpenAI-compatible routes: `GET /v1/models` lists the functions the caller
 * may call as models named `tenant/namespace/name`; `POST /v1/completions`
 * and `POST /v1/chat/completions` call the function the body's `model`
 * names. Any OpenAI client works with base URL `http://gateway/v1`.
 *
 * @module
 */
import { Hono } from "hono";
import { ValidationError } from "../../common/errors.ts";
import { ModelNotFound } from "../middleware/errors.ts";
import { allows } from "../auth.ts";
import { openaiInput, requestCall, resolveBareModel } from "../call.ts";
import { forward } from "../proxy.ts";
import type { GatewayEnv, RouteDeps } from "../types.ts";
import { callResponse, signalSource } from "./_call.ts";

/** The OpenAI-style calls handled by the raw listener's warm path too. */
export const OPENAI_CALL_PATHS: ReadonlySet<string> = new Set([
  "/v1/completions",
  "/v1/chat/completions",
]);

/** The `/v1` routes, mounted at `/v1`. */
export function openaiRoutes(deps: RouteDeps): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>();
  const ctx = {
    cache: deps.cache,
    bodyLimit: deps.bodyLimit,
    authEnabled: deps.auth.enabled,
    probe: deps.jsonProbe,
    auth: deps.auth,
  };
  // `created` in seconds since the epoch, as OpenAI's; the function's creation (0 when unknown).
  const model = (id: string) => ({
    id,
    object: "model",
    created: Math.floor((deps.cache.createdAt(id) ?? 0) / 1000),
    owned_by: id.split("/")[0],
  });
  app.get("/models", (c) => {
    const p = c.var.principal;
    return c.json({
      object: "list",
      data: deps.cache.functionIds().filter((id) => {
        const [t, ns] = id.split("/");
        return allows(p, "inference", t, ns);
      }).map(model),
    });
  });
  // One model (`models.retrieve`): its id whole (`public/demo/ngram`, slashes escaped or
  // not), or a bare name as calls take it; only a function the caller may call.
  app.get("/models/*", (c) => {
    const p = c.var.principal;
    const path = c.req.path;
    const raw = path.slice(path.indexOf("/models/") + "/models/".length);
    let name: string;
    try {
      name = decodeURIComponent(raw);
    } catch {
      throw new ValidationError(
        `Invalid model id "${raw.slice(0, 200)}": bad percent-encoding`,
        "model",
      );
    }
    const found = !name
      ? undefined
      : name.includes("/")
      ? deps.cache.resolveModel(name)
      : resolveBareModel(deps.cache, p, name);
    if (!found || !allows(p, "inference", found.tenant, found.namespace)) {
      throw new ModelNotFound(name);
    }
    return c.json(model(`${found.tenant}/${found.namespace}/${found.func}`));
  });
  for (const path of OPENAI_CALL_PATHS) {
    app.post(path.slice("/v1".length), async (c) => {
      const rec = c.var.call;
      const req = c.req.raw;
      const input = await openaiInput(
        ctx,
        c.var.principal,
        requestCall(req, deps.bodyBudget),
        path,
        rec.t0,
        (t, known) => rec.setTarget(t, known),
        new URL(req.url).search,
      );
      const answer = await forward(deps, input, signalSource(req.signal));
      rec.answered(answer);
      return callResponse(answer, rec, req.signal);
    });
  }
  return app;
}
