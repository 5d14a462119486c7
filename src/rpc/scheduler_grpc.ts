/**
 * `SchedulerService` over gRPC: {@linkcode serveScheduler} exposes any
 * {@linkcode SchedulerClient}; {@linkcode GrpcSchedulerClient} calls one of
 * several scheduler replicas, moving to the next when one is unreachable or
 * is not the leader.
 *
 * @module
 */
import { InferxError } from "../common/errors.ts";
import {
  answeredByRole,
  call,
  clientOptions,
  endWithStatus,
  fromGrpcError,
  grpc,
  loadService,
  type PeerClientOptions,
  serve,
  shutdown,
  toGrpcError,
  unary,
} from "./grpc.ts";
import type { GrpcServerHandle } from "./meta_grpc.ts";
import {
  type CallDemand,
  type FuncLoad,
  type GatewayAdvice,
  type Lease,
  type LeaseRequest,
  type LeaseStage,
  NOT_LEADER,
  type SchedulerClient,
} from "./types.ts";

const Service = loadService("scheduler.proto", "scheduler", "SchedulerService");

interface WireLoad {
  tenant: string;
  namespace: string;
  func: string;
  version: number;
  queued: number;
  wait_ms: number;
  inflight: number;
  inflight_tokens: number;
  workers: number;
}

interface WireAdvice {
  reclaim: string[];
  scale_out: {
    tenant: string;
    namespace: string;
    func: string;
    version: number;
    workers: number;
  }[];
  /** Absent from a scheduler of an earlier release. */
  rates?: { tenant: string; per_s: number; burst: number }[];
  gateways?: number;
}

interface WireLease {
  pod_id: string;
  endpoint: string;
  cold_start: boolean;
  version: number;
  resumed: boolean;
}

interface WireLeaseRequest {
  tenant: string;
  namespace: string;
  func: string;
  gateway_id: string;
  timeout_ms: number;
  /** The function version the call routes to; 0: the newest. */
  version: number;
}

interface WireProgress {
  stage: string;
  lease?: WireLease | null;
}

function leaseRequest(r: WireLeaseRequest): LeaseRequest {
  return {
    tenant: r.tenant,
    namespace: r.namespace,
    func: r.func,
    gatewayId: r.gateway_id,
    timeoutMs: r.timeout_ms,
    version: r.version || undefined,
  };
}

function wireLease(l: Lease): WireLease {
  return {
    pod_id: l.podId,
    endpoint: l.endpoint,
    cold_start: l.coldStart,
    resumed: l.resumed,
    version: l.version,
  };
}

function fromWireLease(w: WireLease): Lease {
  return {
    podId: w.pod_id,
    endpoint: w.endpoint,
    coldStart: w.cold_start,
    resumed: w.resumed,
    version: w.version,
  };
}

const STAGES: ReadonlySet<string> = new Set<LeaseStage>(["placing", "starting", "restoring"]);

/** A signal aborted when the caller of `c` cancels it. */
function cancelled(c: { on(event: "cancelled", fn: () => void): unknown }): AbortSignal {
  const abort = new AbortController();
  c.on("cancelled", () => abort.abort(new InferxError("unavailable", "Lease request cancelled")));
  return abort.signal;
}

/**
 * Serves `sched` as `SchedulerService` on `address`; `id` names this
 * instance. With `clusterToken`, calls without it are refused.
 */
export async function serveScheduler(
  sched: SchedulerClient,
  address: string,
  id: string,
  clusterToken?: string,
): Promise<GrpcServerHandle> {
  const { server, port } = await serve(Service, {
    ConnectScheduler: unary(async (req: { gateway_id: string; leased_pods: string[] }) => {
      await sched.refreshGateway(req.gateway_id, req.leased_pods);
      return { scheduler_id: id };
    }),
    LeaseWorker: (
      c: grpc.ServerUnaryCall<WireLeaseRequest, WireLease>,
      cb: grpc.sendUnaryData<WireLease>,
    ) => {
      sched.leaseWorker(leaseRequest(c.request), cancelled(c)).then(
        (l) => cb(null, wireLease(l)),
        (err) => cb(toGrpcError(err)),
      );
    },
    LeaseWorkerProgress: (c: grpc.ServerWritableStream<WireLeaseRequest, WireProgress>) => {
      sched.leaseWorker(leaseRequest(c.request), cancelled(c), (stage) => c.write({ stage }))
        .then(
          (l) => {
            c.write({ stage: "", lease: wireLease(l) });
            c.end();
          },
          // Not `destroy()`: the gateway would hear of the failure only at its deadline.
          (err) => endWithStatus(c, toGrpcError(err)),
        );
    },
    ReturnWorker: unary(async (req: { pod_id: string; gateway_id: string; failed: boolean }) => {
      await sched.returnWorker({
        podId: req.pod_id,
        gatewayId: req.gateway_id,
        failed: req.failed,
      });
      return {};
    }),
    RefreshGateway: unary(
      async (
        req: {
          gateway_id: string;
          leased_pods: string[];
          load: WireLoad[];
          calls: { tenant: string; calls: number }[];
        },
      ) => {
        const advice = await sched.refreshGateway(
          req.gateway_id,
          req.leased_pods,
          req.load.map((l) => ({
            tenant: l.tenant,
            namespace: l.namespace,
            func: l.func,
            version: l.version,
            queued: l.queued,
            waitMs: l.wait_ms,
            inflight: l.inflight,
            inflightTokens: l.inflight_tokens,
            workers: l.workers,
          })),
          req.calls,
        );
        return {
          reclaim: advice.reclaim,
          scale_out: advice.scaleOut,
          rates: (advice.rates ?? []).map((r) => ({
            tenant: r.tenant,
            per_s: r.perS,
            burst: r.burst,
          })),
          gateways: advice.gateways ?? 0,
        } satisfies WireAdvice;
      },
    ),
    KillPod: unary(async (req: { pod_id: string }) => {
      await sched.killPod(req.pod_id);
      return {};
    }),
  }, { address, clusterToken });
  return { port, stop: () => shutdown(server) };
}

/**
 * Whether a client of several replicas asks the next one after `e` from
 * one: that one could not be reached, or does not lead. A refusal of the
 * leader's own (a pod its store would not take, its `retry_after_s` with
 * it) is the answer: the next replica, not leading, would only hide it.
 */
function askNext(e: InferxError): boolean {
  return e.code === "unavailable" && (!answeredByRole(e) || e.details?.[NOT_LEADER] === true);
}

/** Options for {@linkcode GrpcSchedulerClient}. */
export interface GrpcSchedulerClientOptions extends PeerClientOptions {
  /** Deadline of calls other than leases (ms). @default 5000 */
  timeoutMs?: number;
}

/** `SchedulerClient` over gRPC to one of `addresses` (the leader answers). */
export class GrpcSchedulerClient implements SchedulerClient {
  #clients: { address: string; client: grpc.Client }[];
  #current = 0;
  #timeout: number;

  constructor(addresses: string[], options: GrpcSchedulerClientOptions = {}) {
    if (addresses.length === 0) throw new InferxError("invalid", "No scheduler address given");
    this.#clients = addresses.map((address) => ({
      address,
      client: new Service(
        address,
        grpc.credentials.createInsecure(),
        clientOptions(`the scheduler at ${address}`, options),
      ),
    }));
    this.#timeout = options.timeoutMs ?? 5000;
  }

  /** Calls the current replica, moving on to the next ones while they are unavailable. */
  async #call<Res>(method: string, req: unknown, timeoutMs: number): Promise<Res> {
    let last: InferxError | undefined;
    for (let i = 0; i < this.#clients.length; i++) {
      const k = (this.#current + i) % this.#clients.length;
      const { address, client } = this.#clients[k];
      try {
        const res = await call<unknown, Res>(
          client,
          method,
          req,
          timeoutMs,
          `the scheduler at ${address}`,
        );
        this.#current = k;
        return res;
      } catch (err) {
        last = err as InferxError;
        if (!askNext(last)) throw last;
      }
    }
    throw last!;
  }

  async connect(gatewayId: string, leasedPods: string[]): Promise<string> {
    const res = await this.#call<{ scheduler_id: string }>(
      "ConnectScheduler",
      { gateway_id: gatewayId, leased_pods: leasedPods },
      this.#timeout,
    );
    return res.scheduler_id;
  }

  leaseWorker(
    req: LeaseRequest,
    signal?: AbortSignal,
    onProgress?: (stage: LeaseStage) => void,
  ): Promise<Lease> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    const wire: WireLeaseRequest = {
      tenant: req.tenant,
      namespace: req.namespace,
      func: req.func,
      gateway_id: req.gatewayId,
      timeout_ms: req.timeoutMs,
      version: req.version ?? 0,
    };
    const options = { deadline: new Date(Date.now() + req.timeoutMs + 2000) };
    return new Promise<Lease>((resolve, reject) => {
      const attempt = (i: number, last?: InferxError) => {
        if (i >= this.#clients.length) return reject(last);
        const k = (this.#current + i) % this.#clients.length;
        const { address, client } = this.#clients[k];
        let settled = false;
        const done = (err: unknown, lease?: Lease) => {
          if (settled) return;
          settled = true;
          signal?.removeEventListener("abort", onAbort);
          if (lease) {
            this.#current = k;
            return resolve(lease);
          }
          if (signal?.aborted) return reject(signal.reason);
          // Its deadline (the lease's own wait, and 2 s) passed: the caller's wait is over, not
          // a scheduler out of reach to try the next one for (with the same deadline, past).
          if ((err as grpc.ServiceError)?.code === grpc.status.DEADLINE_EXCEEDED) {
            return reject(
              new InferxError("timeout", `No worker lease within ${req.timeoutMs} ms`, {
                cause: err,
                retryable: true,
              }),
            );
          }
          const e = fromGrpcError(err, `the scheduler at ${address}`);
          if (askNext(e)) attempt(i + 1, e);
          else reject(e);
        };
        let c: { cancel(): void };
        if (onProgress) {
          const stream = (client as unknown as {
            LeaseWorkerProgress(r: unknown, o: grpc.CallOptions): grpc.ClientReadableStream<
              WireProgress
            >;
          }).LeaseWorkerProgress(wire, options);
          let lease: Lease | undefined;
          stream.on("data", (m: WireProgress) => {
            if (m.lease) lease = fromWireLease(m.lease);
            else if (STAGES.has(m.stage)) onProgress(m.stage as LeaseStage);
          });
          stream.on("error", (err) => done(err));
          stream.on("end", () =>
            lease ? done(null, lease) : done({
              code: grpc.status.UNAVAILABLE,
              details: "the lease stream ended without a lease",
            }));
          c = stream;
        } else {
          c = (client as unknown as {
            LeaseWorker(
              r: unknown,
              o: grpc.CallOptions,
              cb: (e: grpc.ServiceError | null, res: WireLease) => void,
            ): grpc.ClientUnaryCall;
          }).LeaseWorker(
            wire,
            options,
            (err, res) => done(err, err ? undefined : fromWireLease(res)),
          );
        }
        const onAbort = () => c.cancel();
        signal?.addEventListener("abort", onAbort, { once: true });
      };
      attempt(0);
    });
  }

  async returnWorker(req: { podId: string; gatewayId: string; failed?: boolean }): Promise<void> {
    await this.#call("ReturnWorker", {
      pod_id: req.podId,
      gateway_id: req.gatewayId,
      failed: req.failed ?? false,
    }, this.#timeout);
  }

  async refreshGateway(
    gatewayId: string,
    leasedPods: string[] = [],
    load: FuncLoad[] = [],
    calls: CallDemand[] = [],
  ): Promise<GatewayAdvice> {
    const res = await this.#call<WireAdvice>(
      "RefreshGateway",
      {
        gateway_id: gatewayId,
        leased_pods: leasedPods,
        load: load.map((l) => ({
          tenant: l.tenant,
          namespace: l.namespace,
          func: l.func,
          version: l.version,
          queued: l.queued,
          wait_ms: l.waitMs,
          inflight: l.inflight,
          inflight_tokens: l.inflightTokens,
          workers: l.workers,
        })),
        calls,
      },
      this.#timeout,
    );
    return {
      reclaim: res.reclaim ?? [],
      scaleOut: res.scale_out ?? [],
      rates: (res.rates ?? []).map((r) => ({ tenant: r.tenant, perS: r.per_s, burst: r.burst })),
      gateways: res.gateways || 1,
    };
  }

  async killPod(podId: string): Promise<void> {
    await this.#call("KillPod", { pod_id: podId }, this.#timeout);
  }

  /** Closes the channels. */
  close(): void {
    for (const c of this.#clients) c.client.close();
  }
}
