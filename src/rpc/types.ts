/**
 * Typed client interfaces through which roles meet. Each has an in-process
 * implementation (the role object itself, for `RUN_SERVICE=All`); gRPC
 * implementations follow the same interfaces. Nothing here depends on a
 * transport.
 *
 * @module
 */
import type { ObjectType } from "../model/keys.ts";
import type { VersionLoad } from "../model/versions.ts";
import type { CallDemand, CallShare } from "../model/schemas.ts";

export type { CallDemand, CallShare };

/** Names one stored object. */
export interface ObjectRef {
  type: ObjectType;
  tenant: string;
  namespace: string;
  name: string;
}

/** One stored object: its name, revision and JSON value as stored. */
export interface MetaRecord extends ObjectRef {
  revision: number;
  /** The stored JSON text (validated on write by the state service). */
  value: string;
}

/** An object as a client writes it: `object` is validated by the state service. */
export interface ObjectInput extends ObjectRef {
  object: unknown;
  /** For updates: the revision the writer read (compare-and-swap). */
  revision?: number;
}

/** Options of {@linkcode MetaClient.create} and {@linkcode MetaClient.update}. */
export interface WriteOptions {
  /** Validate and admit the object, answer what would be stored, write nothing. @default false */
  dryRun?: boolean;
}

/** What a create or update did: the record stored (or that would be). */
export interface WriteResult extends MetaRecord {
  /**
   * The update changed nothing (the object equals the stored one once
   * defaults are applied): no write, the revision and version are the
   * stored ones.
   */
  unchanged?: boolean;
  /** Nothing was written: a dry run. `revision` is the stored one (0 when it would be created). */
  dryRun?: boolean;
}

/** A change seen through {@linkcode MetaClient.watch}. */
export type MetaEvent =
  | { type: "put"; record: MetaRecord }
  | { type: "delete"; ref: ObjectRef; revision: number };

/** Options for {@linkcode MetaClient.watch}. */
export interface MetaWatchOptions {
  tenant?: string;
  namespace?: string;
  /** Changes after this revision; default: from now. */
  afterRevision?: number;
  onEvent(ev: MetaEvent): void;
  /** The watch ended; a `CompactedError` asks for a fresh list. */
  onError?(err: Error): void;
}

/** The state service's API (`IxMetaService`). */
export interface MetaClient {
  /** The service's version string. */
  version(): Promise<string>;
  get(ref: ObjectRef): Promise<MetaRecord | undefined>;
  list(
    type: ObjectType,
    tenant?: string,
    namespace?: string,
  ): Promise<{ items: MetaRecord[]; revision: number }>;
  /** Validates and creates; throws `ValidationError`, `AlreadyExistsError`, `NotFoundError`. */
  create(input: ObjectInput, options?: WriteOptions): Promise<WriteResult>;
  /**
   * Validates and replaces at `input.revision`; throws `ConflictError` when it
   * moved. An update equal to the stored object writes nothing and answers
   * `unchanged`.
   */
  update(input: ObjectInput, options?: WriteOptions): Promise<WriteResult>;
  /** Deletes (at `revision` when given); returns the store revision of the delete. */
  delete(ref: ObjectRef, revision?: number): Promise<number>;
  watch(type: ObjectType, options: MetaWatchOptions): { cancel(): void };
}

/** A request for a worker of one function. */
export interface LeaseRequest {
  tenant: string;
  namespace: string;
  func: string;
  gatewayId: string;
  /** How long the gateway can wait for a worker (ms). */
  timeoutMs: number;
  /** The function version the gateway routes the call to (a traffic split); absent: the newest. */
  version?: number;
}

/** What a gateway reports in its heartbeat of the calls of one function version. */
export interface FuncLoad extends VersionLoad {
  tenant: string;
  namespace: string;
  func: string;
}

/** The scheduler's answer to a gateway's heartbeat. */
export interface GatewayAdvice {
  /** Leased workers to give back once their calls are done (fair share between tenants). */
  reclaim: string[];
  /** Function versions to lease more workers of (`scaleout_policy.queue_ms`, `inflight_tokens`). */
  scaleOut: { tenant: string; namespace: string; func: string; version: number; workers: number }[];
  /**
   * This gateway's share of each tenant's call rate, for every tenant with
   * one (absent from a scheduler of an earlier release: the whole rates).
   */
  rates?: CallShare[];
  /**
   * The gateways the scheduler hears from, this one included: a tenant
   * whose rate has no share here yet (a quota just set) takes this part of
   * it until the next heartbeat. Absent, or 0: one.
   */
  gateways?: number;
}

/** A worker leased to a gateway. */
export interface Lease {
  podId: string;
  /** `host:port` of the worker. */
  endpoint: string;
  /** Whether the pod was started for this lease. */
  coldStart: boolean;
  /** Whether the pod was resumed from a standby tier for this lease. */
  resumed: boolean;
  /** The function version the pod runs. */
  version: number;
}

/**
 * What a waiting lease is waiting for: a pod to be placed, a pod of the
 * function starting, or one being restored from standby.
 */
export type LeaseStage = "placing" | "starting" | "restoring";

/**
 * The `details` field of a lease's `worker_failed` error that holds the
 * failed worker's last output, apart from its message: the gateway shows it
 * only to callers who may read the function's pods' logs.
 */
export const WORKER_OUTPUT = "worker_output";

/**
 * The detail a scheduler replica that does not lead refuses with (`true`):
 * a client of several replicas asks the next one.
 */
export const NOT_LEADER = "not_leader";

/** The scheduler's API (`SchedulerService`). */
export interface SchedulerClient {
  /**
   * Leases a worker; rejects with an `InferxError` whose code says why
   * (`timeout`, `worker_failed`, `not_found`, `unschedulable`; the failed
   * worker's output in `details[WORKER_OUTPUT]`). Aborting
   * `signal` withdraws the request. `onProgress` hears each stage of the
   * wait as it changes (for callers that show cold-start progress).
   */
  leaseWorker(
    req: LeaseRequest,
    signal?: AbortSignal,
    onProgress?: (stage: LeaseStage) => void,
  ): Promise<Lease>;
  /** Gives a worker back; `failed` asks for it to be replaced. */
  returnWorker(req: { podId: string; gatewayId: string; failed?: boolean }): Promise<void>;
  /**
   * Heartbeat of a gateway with the pods it holds and, when it says, the load
   * of its functions and the calls it was asked of tenants with a call
   * rate: keeps its leases, tells a restarted scheduler who holds what, and
   * is answered with leases to give back, functions to lease more workers
   * of, and its shares of the call rates.
   */
  refreshGateway(
    gatewayId: string,
    leasedPods?: string[],
    load?: FuncLoad[],
    calls?: CallDemand[],
  ): Promise<GatewayAdvice>;
  /** Terminates a pod now. */
  killPod(podId: string): Promise<void>;
}

/**
 * The node agent's API (`NodeAgentService`). Pods are not started or stopped
 * through it: the agent reconciles the pods the store places on its node.
 */
export interface NodeAgentClient {
  /** The last `lines` lines a pod printed; `not_found` for a pod this node does not run. */
  readPodLog(podId: string, lines?: number): Promise<string>;
}
