/**
 * Leader election of scheduler replicas: each campaigns on an etcd lease;
 * the one elected schedules, the others answer UNAVAILABLE (retryable) until
 * they win. A replica whose campaign fails exits rather than act on, since
 * it may have lost its lease (crash-only); so does a follower whose key has
 * been the oldest for twice the TTL without it being told it leads (its
 * wait broke on a compacted revision after an etcd restart).
 *
 * @module
 */
import { Etcd3 } from "etcd3";
import { InferxError } from "../common/errors.ts";
import { grpcChannelOptions } from "../common/grpc_options.ts";
import { cappedBackoff } from "../common/retry.ts";
import { type Lease, NOT_LEADER, type SchedulerClient } from "../rpc/types.ts";

/** Options for {@linkcode campaign}. */
export interface CampaignOptions {
  /** Seconds the leader's etcd lease lives without renewal. @default 3 */
  ttlS?: number;
  /** The election's name in etcd. @default "inferx-scheduler" */
  election?: string;
  /** Called once when this replica is elected. */
  onElected(): void;
  /** Called when the campaign fails; the replica may no longer lead. */
  onLost(err: Error): void;
}

/** A running campaign. */
export interface Campaign {
  /** Resigns (another replica takes over at once) and closes the etcd client. */
  stop(): Promise<void>;
}

/** Campaigns for leadership as `id` on the etcd cluster at `etcdAddrs` (comma-separated). */
export function campaign(etcdAddrs: string, id: string, options: CampaignOptions): Campaign {
  // A follower waits on a watch for the leader's key to go; the library's default backoff
  // (up to 30 s) after etcd restarts would delay the takeover that long.
  const etcd = new Etcd3({
    hosts: etcdAddrs.split(","),
    grpcOptions: grpcChannelOptions({ pingIdle: false }),
    faultHandling: { watchBackoff: cappedBackoff(100, 2000) },
  });
  const ttlS = options.ttlS ?? 3;
  const election = etcd.election(options.election ?? "inferx-scheduler", ttlS);
  const c = election.campaign(id);
  // Fencing: etcd may give the lease to another replica TTL after its last renewal, while the
  // library only reports a lost lease after twice the TTL without one (two leaders meanwhile).
  // A leader whose renewals stop getting through steps down itself at 2/3 of the TTL. Times are
  // the process's monotonic ones (the library's own `lastKeepAlive` is the system clock's, which
  // a step back would keep from ever looking old: two leaders for as long as the step).
  const lease = (c as unknown as {
    lease: { on(e: string, f: () => void): void; grant(): Promise<unknown> };
  }).lease;
  let renewed = performance.now();
  lease.grant().then(() => renewed = performance.now(), () => {});
  lease.on("keepaliveSucceeded", () => renewed = performance.now());
  let fence: ReturnType<typeof setInterval> | undefined;
  let lost = false;
  const lose = (err: Error) => {
    if (lost) return;
    lost = true;
    clearInterval(fence);
    clearInterval(watchdog);
    options.onLost(err);
  };
  // A follower waits on a watch of the key before its own. After an etcd restart that watch may
  // come back at a compacted revision, and the library then neither elects nor fails: the
  // replica would follow a leader that is gone for ever. Its key being the oldest (the
  // election's leader, by etcd's order) for twice the TTL without its election is that.
  let oldestSince = 0;
  const watchdog = setInterval(async () => {
    const first = await election.leader().catch(() => undefined);
    if (lost || fence) return;
    if (first !== id) return void (oldestSince = 0);
    oldestSince ||= performance.now();
    const waited = Math.round(performance.now() - oldestSince);
    if (waited > 2 * ttlS * 1000) {
      lose(new Error(`Leads the election in etcd for ${waited} ms, but was never elected`));
    }
  }, ttlS * 1000);
  c.on("elected", () => {
    clearInterval(watchdog);
    fence = setInterval(() => {
      const since = Math.round(performance.now() - renewed);
      if (since > (ttlS * 1000 * 2) / 3) {
        lose(new Error(`No renewal of the leader's etcd lease for ${since} ms (TTL ${ttlS} s)`));
      }
    }, Math.max(50, (ttlS * 1000) / 12));
    options.onElected();
  });
  c.on("error", (err: Error) => lose(err));
  return {
    async stop() {
      lost = true;
      clearInterval(fence);
      clearInterval(watchdog);
      await c.resign().catch(() => {});
      etcd.close();
    },
  };
}

/**
 * A `SchedulerClient` that passes calls to the leader `leader()` returns,
 * and refuses them (`unavailable`, retryable) while this replica does not
 * lead: what a replica serves on its `SchedulerService` port.
 */
export function leaderOnly(
  id: string,
  leader: () => SchedulerClient | undefined,
): SchedulerClient {
  const notLeader = () =>
    Promise.reject(
      new InferxError("unavailable", `Scheduler ${id} is not the leader`, {
        retryable: true,
        // A client of several replicas asks the next for it (`GrpcSchedulerClient`).
        details: { [NOT_LEADER]: true },
      }),
    );
  return {
    leaseWorker: (req, signal, onProgress): Promise<Lease> =>
      leader()?.leaseWorker(req, signal, onProgress) ?? notLeader(),
    returnWorker: (req) => leader()?.returnWorker(req) ?? notLeader(),
    refreshGateway: (gw, pods, load, calls) =>
      leader()?.refreshGateway(gw, pods, load, calls) ?? notLeader(),
    killPod: (podId) => leader()?.killPod(podId) ?? notLeader(),
  };
}
