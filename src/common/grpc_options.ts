/**
 * Channel settings of every gRPC client and server of the platform (its own
 * services' and its etcd clients'), which the library's defaults get wrong
 * for a cluster's control plane:
 *
 * - **Keepalive.** A peer that dies or is cut off without closing its
 *   connections (no FIN, no RST) is never noticed by default: unary calls
 *   time out on the dead connection forever and a watch stops delivering
 *   without an error. A ping every `keepaliveMs` unanswered within
 *   `keepaliveTimeoutMs` closes it, and the next call connects again.
 * - **Reconnecting.** The default backoff (1 s, growing 1.6x up to 120 s)
 *   leaves clients away for seconds to minutes after a service returns;
 *   here 0.1 s up to 2 s, as the etcd watches' backoff.
 * - **Message size.** The default 4 MiB limit on what a client receives
 *   fails a `List` of a few large objects (queued calls with their bodies)
 *   for good; {@linkcode GRPC_MAX_MESSAGE_BYTES} instead.
 *
 * @module
 */

/** The largest gRPC message a client or server of the platform sends or receives. */
export const GRPC_MAX_MESSAGE_BYTES = 256 * 1024 * 1024;

/** Options of {@linkcode grpcChannelOptions}. */
export interface GrpcChannelTuning {
  /** A ping after this long without one (ms). @default 10000 */
  keepaliveMs?: number;
  /** How long a ping may go unanswered before the connection is closed (ms). @default 5000 */
  keepaliveTimeoutMs?: number;
  /**
   * Ping also while no call is open. Off for etcd, whose server closes a
   * connection that pings without a stream open. @default true
   */
  pingIdle?: boolean;
}

/** Channel options (`@grpc/grpc-js`'s names) for a client or a server. */
export function grpcChannelOptions(t: GrpcChannelTuning = {}): Record<string, number> {
  return {
    "grpc.keepalive_time_ms": t.keepaliveMs ?? 10_000,
    "grpc.keepalive_timeout_ms": t.keepaliveTimeoutMs ?? 5_000,
    "grpc.keepalive_permit_without_calls": t.pingIdle === false ? 0 : 1,
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 2_000,
    "grpc.max_receive_message_length": GRPC_MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": GRPC_MAX_MESSAGE_BYTES,
  };
}
