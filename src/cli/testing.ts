/**
 * What the command line's tests share: `Send` over a gateway app without
 * sockets.
 *
 * @module
 */
import type { gatewayFixture } from "../gateway/testing.ts";
import { answerOf, type Send } from "./_shared.ts";

type App = Awaited<ReturnType<typeof gatewayFixture>>["app"];

/** `Send` over the gateway app, without sockets. */
export const sendTo = (app: App): Send => async (method, path, body) => {
  const r = await app.request(path, {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return answerOf(r.status, await r.text());
};
