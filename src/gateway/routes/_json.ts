/**
 * Reading a JSON request body for the management routes: bounded, with a
 * clear 400 when it is not JSON.
 *
 * @module
 */
import { ValidationError } from "../../common/errors.ts";
import { jsonTooHeavy } from "../../common/json.ts";
import { MAX_OBJECT_DEPTH } from "../../model/schemas.ts";
import { readLimited } from "../call.ts";
import { type BodyBudget, BodyTooLarge } from "../http1/server.ts";

/**
 * The parsed JSON body of `req`, at most `limit` bytes, nesting no deeper
 * than objects may (`MAX_OBJECT_DEPTH`) and holding no more arrays and
 * objects than `MAX_JSON_ITEMS`.
 */
export async function readJson(
  req: Request,
  limit: number,
  budget?: BodyBudget,
): Promise<unknown> {
  if (Number(req.headers.get("content-length") ?? 0) > limit) throw new BodyTooLarge(limit);
  const bytes = await readLimited(req.body, limit, budget);
  // Counted before it is parsed: parsing cannot be interrupted (see jsonTooHeavy).
  const heavy = jsonTooHeavy(bytes, MAX_OBJECT_DEPTH);
  if (heavy) throw new ValidationError(`Invalid request body: it ${heavy}`);
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch (err) {
    throw new ValidationError(`Request body is not valid JSON: ${(err as Error).message}`);
  }
}
