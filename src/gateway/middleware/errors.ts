/**
 * Errors as the gateway answers them, in one place for the Hono app and the
 * raw warm path: the status from `httpStatus()`, a JSON body, and the fields
 * a client acts on (`WWW-Authenticate` on 401).
 *
 * @module
 */
import { errorBody, httpStatus, type InferxError } from "../../common/errors.ts";

/** An error answer: status, headers and JSON body text. */
export interface ErrorAnswer {
  status: number;
  headers: [string, string][];
  body: string;
}

/** The answer to `err`. */
export function errorAnswer(err: InferxError): ErrorAnswer {
  const status = httpStatus(err.code);
  const headers: [string, string][] = [["content-type", "application/json"]];
  if (status === 401) headers.push(["www-authenticate", 'Bearer realm="inferx"']);
  return { status, headers, body: JSON.stringify(errorBody(err)) };
}
