/**
 * `RUN_SERVICE=Gateway`: the HTTP API on `GATEWAY_PORT`, reaching the state
 * service and the scheduler replicas over gRPC, and node agents for pod
 * logs at the address each node records. `GATEWAY_WORKERS` processes (the
 * core count by default) serve the port together.
 *
 * @module
 */
import type { Config } from "../common/config.ts";
import { openAudit } from "../audit/mod.ts";
import * as gateway from "../gateway/mod.ts";
import { GrpcMetaClient } from "../rpc/meta_grpc.ts";
import { GrpcNodeAgentClient } from "../rpc/nodeagent_grpc.ts";
import { GrpcSchedulerClient } from "../rpc/scheduler_grpc.ts";
import { gatewayOptions, type RoleHandle } from "./_shared.ts";
import {
  bothStopped,
  gatewayProcesses,
  planGroup,
  startMembers,
  stopWithLeader,
} from "./_gateway_group.ts";

/** Starts a gateway (and, with `GATEWAY_WORKERS` over 1, the others of its group). */
export async function start(config: Config): Promise<RoleHandle> {
  const member = config.gateway.group;
  const group = member ??
    planGroup(gatewayProcesses(config.gateway.workers, config.gateway.port));
  const { clusterToken } = config.cluster;
  const meta = new GrpcMetaClient(config.cluster.statesvcAddr, { clusterToken });
  const scheduler = new GrpcSchedulerClient(config.cluster.schedulerAddrs, { clusterToken });
  const agents = new Map<string, GrpcNodeAgentClient>();
  await Deno.mkdir(config.dataDir, { recursive: true, mode: 0o700 });
  const audit = openAudit(config);
  const gw = await gateway.start({
    meta,
    scheduler,
    nodeAgent(node) {
      if (!node.agentAddr) return undefined;
      let c = agents.get(node.agentAddr);
      if (!c) {
        agents.set(node.agentAddr, c = new GrpcNodeAgentClient(node.agentAddr, { clusterToken }));
      }
      return c;
    },
    ...gatewayOptions(config, group?.ports.length),
    audit,
    group,
  });
  const members = !member && group
    ? startMembers(group, {}, config.gateway.drainS * 1000)
    : undefined;
  const handle: RoleHandle = {
    async stop() {
      // Every process drains at once: stopped one after the other, the first took new calls
      // (every new connection, once the members closed their listeners) through their drain.
      await bothStopped(members?.stop(), gw.stop());
      await audit.close();
      for (const c of agents.values()) c.close();
      scheduler.close();
      meta.close();
    },
  };
  if (member) stopWithLeader(() => handle.stop());
  return handle;
}
