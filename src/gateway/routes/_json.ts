/**
 * Reading a JSON request body for the management routes: bounded, with a
 * clear 400 when it is not JSON.
 *
 * @module
 */
import { InferxError, ValidationError } from "../../common/errors.ts";
import { jsonText, jsonTooHeavy } from "../../common/json.ts";
import { MAX_OBJECT_DEPTH } from "../../model/schemas.ts";
import { readLimited } from "../call.ts";
import { type JsonProbe, OFF_THREAD_BYTES } from "../json_probe.ts";
import { type BodyBudget, BodyTooLarge } from "../http1/server.ts";

/**
 * Throws when the caller, authenticated at the request's head, no longer
 * holds (its key was revoked, or expired, while the body came: a slow body
 * can take minutes). Run once the body is in, before it is parsed or acted
 * on (`Authenticator.stillHolds`), as for calls.
 */
export type StillHolds = () => void;

/**
 * The parsed JSON body of `req`, at most `limit` bytes, nesting no deeper
 * than objects may (`MAX_OBJECT_DEPTH`) and holding no more arrays and
 * objects than `MAX_JSON_ITEMS`; `holds` is checked once it is in.
 */
export async function readJson(
  req: Request,
  limit: number,
  holds: StillHolds,
  budget?: BodyBudget,
): Promise<unknown> {
  if (Number(req.headers.get("content-length") ?? 0) > limit) throw new BodyTooLarge(limit);
  const bytes = await readLimited(req.body, limit, budget);
  holds();
  return parseCounted(bytes);
}

/** JSON text `bytes` parsed, counted first: parsing cannot be interrupted (see jsonTooHeavy). */
function parseCounted(bytes: Uint8Array): unknown {
  const heavy = jsonTooHeavy(bytes, MAX_OBJECT_DEPTH);
  if (heavy) throw new ValidationError(`Invalid request body: it ${heavy}`);
  let text: string;
  try {
    text = jsonText(bytes);
  } catch (err) {
    throw new ValidationError(`Request body is not valid JSON: ${(err as Error).message}`);
  }
  return parse(text);
}

/**
 * An object write's body, as {@linkcode readJson} (`holds` checked once it is in); one past `OFF_THREAD_BYTES`
 * is parsed in `probe`'s thread and comes back without whitespace, refused
 * 413 when that is longer than a stored object may be (`maxChars`).
 */
export async function readObjectJson(
  req: Request,
  limit: number,
  maxChars: number,
  probe: JsonProbe,
  holds: StillHolds,
  budget?: BodyBudget,
): Promise<unknown> {
  if (Number(req.headers.get("content-length") ?? 0) > limit) throw new BodyTooLarge(limit);
  const bytes = await readLimited(req.body, limit, budget);
  holds();
  if (bytes.byteLength <= OFF_THREAD_BYTES) return parseCounted(bytes);
  // Only the body's own bytes go (a view's whole buffer would be copied).
  const own = bytes.byteLength === bytes.buffer.byteLength ? bytes : bytes.slice();
  const r = await probe.object(own, { maxDepth: MAX_OBJECT_DEPTH, maxChars });
  if (r.ok) return parse(r.text);
  if (r.heavy !== undefined) throw new ValidationError(`Invalid request body: it ${r.heavy}`);
  if (r.chars !== undefined) {
    throw new InferxError(
      "too_large",
      `Request body is ${r.chars} characters of JSON without its whitespace; a stored object is ${maxChars} bytes at most`,
      { details: { limit: maxChars } },
    );
  }
  throw new ValidationError(`Request body is not valid JSON: ${r.invalid}`);
}

function parse(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ValidationError(`Request body is not valid JSON: ${(err as Error).message}`);
  }
}
