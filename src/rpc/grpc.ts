/**
 * gRPC plumbing shared by every service: loading the protos with
 * `@grpc/proto-loader`, starting a server, and mapping errors both ways.
 * An `InferxError` crosses the wire as a gRPC status plus its exact code in
 * the `ix-code` trailer, so the gateway answers the same HTTP status in
 * distributed mode as in `All`.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import {
  AlreadyExistsError,
  ConflictError,
  connectionText,
  type ErrorCode,
  InferxError,
  NotFoundError,
  toInferxError,
  withoutResolutionNote,
} from "../common/errors.ts";
import { grpcChannelOptions, type GrpcChannelTuning } from "../common/grpc_options.ts";
import { AdminKey } from "../common/credential.ts";
import { logger } from "../common/log.ts";
import { CompactedError } from "../store/types.ts";

export { grpc };

const PROTO_DIR = new URL("../../proto/", import.meta.url).pathname;

/** Loads `proto/{file}` and returns the service constructor `pkg.Service`. */
export function loadService(
  file: string,
  pkg: string,
  service: string,
): grpc.ServiceClientConstructor {
  const def = protoLoader.loadSync(`${PROTO_DIR}${file}`, {
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const loaded = grpc.loadPackageDefinition(def) as Record<string, Record<string, unknown>>;
  return loaded[pkg][service] as grpc.ServiceClientConstructor;
}

const TO_GRPC: Record<ErrorCode, grpc.status> = {
  invalid: grpc.status.INVALID_ARGUMENT,
  not_found: grpc.status.NOT_FOUND,
  method_not_allowed: grpc.status.UNIMPLEMENTED,
  already_exists: grpc.status.ALREADY_EXISTS,
  conflict: grpc.status.ABORTED,
  queue_full: grpc.status.RESOURCE_EXHAUSTED,
  too_large: grpc.status.RESOURCE_EXHAUSTED,
  unsupported_media_type: grpc.status.INVALID_ARGUMENT,
  timeout: grpc.status.DEADLINE_EXCEEDED,
  unavailable: grpc.status.UNAVAILABLE,
  worker_failed: grpc.status.UNAVAILABLE,
  unschedulable: grpc.status.RESOURCE_EXHAUSTED,
  unsupported: grpc.status.FAILED_PRECONDITION,
  unauthenticated: grpc.status.UNAUTHENTICATED,
  forbidden: grpc.status.PERMISSION_DENIED,
  quota_exceeded: grpc.status.RESOURCE_EXHAUSTED,
  internal: grpc.status.INTERNAL,
};

const FROM_GRPC: Partial<Record<grpc.status, ErrorCode>> = {
  [grpc.status.INVALID_ARGUMENT]: "invalid",
  [grpc.status.NOT_FOUND]: "not_found",
  [grpc.status.ALREADY_EXISTS]: "already_exists",
  [grpc.status.ABORTED]: "conflict",
  // Without an `ix-code`, raised by the library itself: a message over the size limit.
  [grpc.status.RESOURCE_EXHAUSTED]: "too_large",
  // Without an `ix-code`, the client's own deadline passed: the role (or what it waits on, the
  // store) did not answer in time, which a caller may try again later (a `timeout` is a call's
  // own wait for a worker, not sent again).
  [grpc.status.DEADLINE_EXCEEDED]: "unavailable",
  [grpc.status.UNAVAILABLE]: "unavailable",
  [grpc.status.CANCELLED]: "unavailable",
  [grpc.status.FAILED_PRECONDITION]: "unsupported",
};

/** Where an error's `details` travel, as UTF-8 JSON. */
const DETAILS_KEY = "ix-details-bin";

/** An error as a gRPC status object for a callback or a stream's `error` event. */
export function toGrpcError(err: unknown): Partial<grpc.StatusObject> & Error {
  const metadata = new grpc.Metadata();
  if (err instanceof CompactedError) {
    metadata.set("ix-code", "compacted");
    return Object.assign(new Error(err.message), {
      code: grpc.status.OUT_OF_RANGE,
      details: err.message,
      metadata,
    });
  }
  const e = toInferxError(err);
  metadata.set("ix-code", e.code);
  // Binary (`-bin`: base64 on the wire): a text field takes printable ASCII only, and the library
  // throws on anything else (a worker's output with a progress bar in it, say).
  if (e.details) metadata.set(DETAILS_KEY, Buffer.from(JSON.stringify(e.details)));
  return Object.assign(new Error(e.message), {
    code: TO_GRPC[e.code],
    details: e.message,
    metadata,
  });
}

/**
 * Ends a server stream with `err` as its status, then drops what is queued
 * behind it. (Destroying the stream with the error sends no status at all:
 * grpc-js ends a destroyed stream without one, and the client, hearing
 * nothing, waits on a watch that is over.)
 */
export function endWithStatus(
  stream: grpc.ServerWritableStream<unknown, unknown>,
  err: Partial<grpc.StatusObject>,
): void {
  (stream as unknown as { call: { sendStatus(s: Partial<grpc.StatusObject>): void } })
    .call.sendStatus(err);
  stream.destroy();
}

/**
 * A gRPC error's text, without the library's empty `Resolution note: ` (its
 * connection errors end with one) that would reach callers in JSON bodies.
 */
function grpcText(e: grpc.ServiceError): string {
  return withoutResolutionNote(e.details || e.message);
}

/** A gRPC client error as the `InferxError` the server raised (or the best match). */
export function fromGrpcError(err: unknown, what: string): InferxError {
  const e = err as grpc.ServiceError;
  if (typeof e?.code !== "number") return toInferxError(err);
  const code = e.metadata?.get("ix-code")?.[0]?.toString();
  if (code === "compacted") return new CompactedError(0, 0);
  const refused = e.metadata?.get(PEER_REFUSED)?.[0]?.toString();
  if (e.code === grpc.status.UNAUTHENTICATED && refused) {
    // This role's configuration, not the caller's credentials: a 503 to callers, not a 401.
    return new InferxError(
      "unavailable",
      refused === "missing"
        ? `${what} takes calls only with the cluster's token: set INFERX_CLUSTER_TOKEN here as there`
        : `${what} refused this role's cluster token: INFERX_CLUSTER_TOKEN differs between them`,
      { cause: err },
    );
  }
  let details: Record<string, unknown> | undefined;
  const raw = e.metadata?.get(DETAILS_KEY)?.[0]?.toString();
  if (raw) {
    try {
      details = JSON.parse(raw);
    } catch {
      // not the platform's: no details
    }
  }
  if (code && code in TO_GRPC) {
    // The classes callers tell these by (`instanceof NotFoundError`), as in one process.
    const text = grpcText(e);
    const answer = code === "not_found"
      ? new NotFoundError(text)
      : code === "conflict"
      ? new ConflictError(text, details)
      : code === "already_exists"
      ? new AlreadyExistsError(text)
      : new InferxError(code as ErrorCode, text, {
        details,
        retryable: code === "unavailable" || code === "timeout",
      });
    (answer as InferxError & { [ROLE_ANSWER]?: true })[ROLE_ANSWER] = true;
    return answer;
  }
  const mapped = FROM_GRPC[e.code as grpc.status] ?? "internal";
  // Named, not addressed: the library's text names the role's address, the cluster's and not a
  // caller's (the error's `cause` keeps it for the logs).
  const message = e.code === grpc.status.DEADLINE_EXCEEDED
    ? `No answer from ${what} in time: it, or the store it waits on, is slow or out of reach`
    : mapped === "unavailable"
    ? `Cannot reach ${what}: ${connectionText(grpcText(e))}`
    : grpcText(e);
  return new InferxError(mapped, message, {
    cause: err,
    retryable: mapped !== "internal" && mapped !== "too_large",
    // No connection to send it on (the library's own refusal, before the call went out): the
    // role never saw it, so nothing of it was written.
    details: e.code === grpc.status.UNAVAILABLE && !code && NOT_SENT.test(grpcText(e))
      ? { not_written: true }
      : undefined,
  });
}

/** Marks an error a role sent back (see {@linkcode answeredByRole}). */
const ROLE_ANSWER = Symbol("roleAnswer");

/**
 * Whether `err` (of {@linkcode fromGrpcError}) is a role's own answer, not
 * the transport's: the role heard the call and refused it (its store out of
 * reach, say), where an error of the transport says it was not reached.
 */
export function answeredByRole(err: unknown): boolean {
  return (err as { [ROLE_ANSWER]?: true } | undefined)?.[ROLE_ANSWER] === true;
}

/** What grpc-js says of a call it failed without sending it: no connection, or its channel closed. */
const NOT_SENT = /^(No connection established|Channel closed before call started)/;

/**
 * The metadata field that carries the cluster's token (`INFERX_CLUSTER_TOKEN`)
 * on every call between the roles.
 */
const TOKEN_FIELD = "authorization";

/**
 * Set on a refusal for the cluster's token, which the caller's side turns
 * into an error about its own configuration (not the 401 of a user's key).
 */
const PEER_REFUSED = "ix-peer-refused";

/**
 * On every answer of a role that asks the token: a client that sends one
 * and hears an answer without it has reached a role that takes calls from
 * anyone (its `INFERX_CLUSTER_TOKEN` unset), and says so.
 */
const TOKEN_ASKED = "ix-peer-token";

/**
 * Refuses every call that does not carry `token` (UNAUTHENTICATED) before
 * its handler runs: for unary and streaming calls alike, as the first thing
 * a call's metadata meets. The token is compared by its hash in constant time.
 */
function requireToken(token: string): grpc.ServerInterceptor {
  const key = new AdminKey(token);
  return (_method, call) =>
    new grpc.ServerInterceptingCall(call, {
      sendMetadata(metadata, next) {
        metadata.set(TOKEN_ASKED, "asked");
        next(metadata);
      },
      start(next) {
        next({
          onReceiveMetadata(metadata, pass) {
            const sent = metadata.get(TOKEN_FIELD)[0];
            const text = typeof sent === "string" ? sent : "";
            const bearer = /^Bearer (\S+)$/.exec(text)?.[1] ?? "";
            if (key.matches(bearer)) {
              // Not handed on to the handlers, which have no use for it.
              metadata.remove(TOKEN_FIELD);
              pass(metadata);
              return;
            }
            const refused = new grpc.Metadata();
            refused.set(PEER_REFUSED, sent === undefined ? "missing" : "wrong");
            call.sendStatus({
              code: grpc.status.UNAUTHENTICATED,
              details: sent === undefined
                ? "This role takes calls only from the cluster's roles: no cluster token was sent"
                : "This role takes calls only from the cluster's roles: the cluster token is not its",
              metadata: refused,
            });
          },
        });
      },
    });
}

/**
 * Sends `token` on every call of a client, and calls `unasked` once when
 * an answer shows the role did not ask for it (a role started without the
 * token takes calls from anyone: the others would never know).
 */
function sendToken(token: string, unasked: () => void): grpc.Interceptor {
  const field = `Bearer ${token}`;
  let told = false;
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set(TOKEN_FIELD, field);
        next(metadata, {
          ...listener,
          onReceiveMetadata(answer, pass) {
            if (!told && answer.get(TOKEN_ASKED).length === 0) {
              told = true;
              unasked();
            }
            pass(answer);
          },
        });
      },
    });
}

/** A client of a role: how its channel is tuned and the token it sends. */
export interface PeerClientOptions extends GrpcChannelTuning {
  /** `INFERX_CLUSTER_TOKEN`: sent on every call; unset: none. */
  clusterToken?: string;
  /** Told once that the role reached does not ask for the token. @default a warning logged */
  onUnasked?: (message: string) => void;
}

/**
 * A client's channel options for the role `what` (its name and address, as
 * messages say it): {@linkcode grpcChannelOptions} and, with the cluster's
 * token, the interceptor that sends it on every call.
 */
export function clientOptions(what: string, t: PeerClientOptions = {}): grpc.ClientOptions {
  const token = t.clusterToken;
  if (!token) return grpcChannelOptions(t);
  const unasked = () =>
    (t.onUnasked ?? ((m: string) => logger("rpc").warn(m)))(
      `${what} does not say it asks for the cluster's token (its INFERX_CLUSTER_TOKEN unset, or ` +
        "a release from before the token): then any peer that reaches its port may write any " +
        "record; set the token there",
    );
  return { ...grpcChannelOptions(t), interceptors: [sendToken(token, unasked)] };
}

/** Adapts an async handler to a unary gRPC handler with error mapping. */
export function unary<Req, Res>(
  fn: (req: Req) => Promise<Res>,
): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    fn(call.request).then((res) => callback(null, res), (err) => callback(toGrpcError(err)));
  };
}

/**
 * Starts a gRPC server for `impl` of `service` on `address` (`host:port`);
 * returns its port. With `clusterToken`, a call that does not carry it is
 * refused.
 */
export function serve(
  service: grpc.ServiceClientConstructor,
  impl: grpc.UntypedServiceImplementation,
  { address, clusterToken }: { address: string; clusterToken?: string },
): Promise<{ server: grpc.Server; port: number }> {
  const server = new grpc.Server({
    ...grpcChannelOptions(),
    ...(clusterToken ? { interceptors: [requireToken(clusterToken)] } : {}),
  });
  server.addService(service.service, impl);
  return new Promise((resolve, reject) => {
    server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, port) => {
      if (err) {
        // The reason alone: the role's `listening` names the address and the setting.
        reject(new InferxError("unavailable", bindFailure(address, err)));
      } else resolve({ server, port });
    });
  });
}

/**
 * Why `address` could not be bound, in the system's words ("Address already
 * in use"), where the library says only "No address added out of total 1
 * resolved": a listener tried there at once says why.
 */
function bindFailure(address: string, err: Error): string {
  const at = address.lastIndexOf(":");
  const hostname = address.slice(0, at).replace(/^\[(.*)\]$/, "$1");
  const port = Number(address.slice(at + 1));
  if (at < 0 || !Number.isInteger(port)) return err.message;
  try {
    Deno.listen({ hostname, port }).close();
  } catch (why) {
    return (why as Error).message;
  }
  return err.message;
}

let exiting = false;

/**
 * This process is about to exit: its gRPC servers' stops leave their
 * connections to the exit to close, and send no GOAWAY. The runtime's
 * `node:http2` can crash a client process that receives one
 * (denoland/deno#36788: a restarted state service took gateways and node
 * agents down with it, 3 times in 8); a closed connection its clients
 * already handle (UNAVAILABLE, retried).
 */
export function exitingProcess(): void {
  exiting = true;
}

/**
 * Stops a server: lets calls finish for `graceMs`, then cancels the rest;
 * nothing once the process is exiting ({@linkcode exitingProcess}).
 */
export function shutdown(server: grpc.Server, graceMs = 1000): Promise<void> {
  if (exiting) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, graceMs);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** Deadline for a call `ms` from now. */
export function deadline(ms: number): grpc.Deadline {
  return new Date(Date.now() + ms);
}

/** Promise form of a unary client call with deadline and error mapping. */
export function call<Req, Res>(
  client: grpc.Client,
  method: string,
  req: Req,
  timeoutMs: number,
  what: string,
): Promise<Res> {
  type Unary = (
    req: Req,
    options: grpc.CallOptions,
    cb: (err: grpc.ServiceError | null, res: Res) => void,
  ) => void;
  const fn = (client as unknown as Record<string, Unary>)[method];
  return new Promise<Res>((resolve, reject) => {
    fn.call(client, req, { deadline: deadline(timeoutMs) }, (err, res) => {
      if (err) reject(fromGrpcError(err, what));
      else resolve(res);
    });
  });
}
