/**
 * `NodeAgentService` over gRPC: {@linkcode serveNodeAgent} exposes any
 * {@linkcode NodeAgentClient}; {@linkcode GrpcNodeAgentClient} is the
 * remote implementation.
 *
 * @module
 */
import { ValidationError } from "../common/errors.ts";
import { type PodInfo, PodInfoSchema } from "../model/cluster.ts";
import { call, grpc, loadService, serve, shutdown, unary } from "./grpc.ts";
import type { GrpcServerHandle } from "./meta_grpc.ts";
import type { NodeAgentClient } from "./types.ts";

const Service = loadService("nodeagent.proto", "nodeagent", "NodeAgentService");

/** Serves `agent` as `NodeAgentService` on `address`. */
export async function serveNodeAgent(
  agent: NodeAgentClient,
  address: string,
): Promise<GrpcServerHandle> {
  const { server, port } = await serve(Service, {
    CreateFuncPod: unary(async (req: { pod_json: string }) => {
      let raw: unknown;
      try {
        raw = JSON.parse(req.pod_json);
      } catch {
        throw new ValidationError("Invalid pod: not JSON");
      }
      const r = PodInfoSchema.safeParse(raw);
      if (!r.success) {
        throw new ValidationError(
          `Invalid pod: ${r.error.issues[0].path.join(".")}: ${r.error.issues[0].message}`,
        );
      }
      await agent.createFuncPod(r.data);
      return {};
    }),
    TerminatePod: unary(async (
      req: { pod_id: string },
    ) => (await agent.terminatePod(req.pod_id), {})),
    ResumePod: unary(async (req: { pod_id: string }) => (await agent.resumePod(req.pod_id), {})),
    RemoveSnapshot: unary(async (
      req: { pod_id: string },
    ) => (await agent.removeSnapshot(req.pod_id), {})),
    ReadPodLog: unary(async (req: { pod_id: string; lines: number }) => ({
      log: await agent.readPodLog(req.pod_id, req.lines || undefined),
    })),
  }, address);
  return { port, stop: () => shutdown(server) };
}

/** `NodeAgentClient` over gRPC. */
export class GrpcNodeAgentClient implements NodeAgentClient {
  #client: grpc.Client;
  #what: string;
  #timeout: number;

  constructor(address: string, options: { timeoutMs?: number } = {}) {
    this.#client = new Service(address, grpc.credentials.createInsecure());
    this.#what = `the node agent at ${address}`;
    this.#timeout = options.timeoutMs ?? 5000;
  }

  #call<Res>(method: string, req: unknown, timeoutMs = this.#timeout): Promise<Res> {
    return call<unknown, Res>(this.#client, method, req, timeoutMs, this.#what);
  }

  async createFuncPod(pod: PodInfo): Promise<void> {
    await this.#call("CreateFuncPod", { pod_json: JSON.stringify(pod) });
  }

  async terminatePod(podId: string): Promise<void> {
    await this.#call("TerminatePod", { pod_id: podId }, 30_000);
  }

  async resumePod(podId: string): Promise<void> {
    await this.#call("ResumePod", { pod_id: podId });
  }

  async readPodLog(podId: string, lines = 50): Promise<string> {
    return (await this.#call<{ log: string }>("ReadPodLog", { pod_id: podId, lines })).log;
  }

  async removeSnapshot(podId: string): Promise<void> {
    await this.#call("RemoveSnapshot", { pod_id: podId });
  }

  /** Closes the channel. */
  close(): void {
    this.#client.close();
  }
}
