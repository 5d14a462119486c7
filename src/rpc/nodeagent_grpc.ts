/**
 * `NodeAgentService` over gRPC: {@linkcode serveNodeAgent} exposes any
 * {@linkcode NodeAgentClient}; {@linkcode GrpcNodeAgentClient} is the
 * remote implementation.
 *
 * @module
 */
import {
  call,
  clientOptions,
  grpc,
  loadService,
  type PeerClientOptions,
  serve,
  shutdown,
  unary,
} from "./grpc.ts";
import type { GrpcServerHandle } from "./meta_grpc.ts";
import type { NodeAgentClient } from "./types.ts";

const Service = loadService("nodeagent.proto", "nodeagent", "NodeAgentService");

/**
 * Serves `agent` as `NodeAgentService` on `address`; with `clusterToken`,
 * calls without it are refused.
 */
export async function serveNodeAgent(
  agent: NodeAgentClient,
  address: string,
  clusterToken?: string,
): Promise<GrpcServerHandle> {
  const { server, port } = await serve(Service, {
    ReadPodLog: unary(async (req: { pod_id: string; lines: number }) => ({
      log: await agent.readPodLog(req.pod_id, req.lines || undefined),
    })),
  }, { address, clusterToken });
  return { port, stop: () => shutdown(server) };
}

/** `NodeAgentClient` over gRPC. */
export class GrpcNodeAgentClient implements NodeAgentClient {
  #client: grpc.Client;
  #what: string;
  #timeout: number;

  constructor(address: string, options: { timeoutMs?: number } & PeerClientOptions = {}) {
    this.#client = new Service(
      address,
      grpc.credentials.createInsecure(),
      clientOptions(`the node agent at ${address}`, options),
    );
    this.#what = `the node agent at ${address}`;
    this.#timeout = options.timeoutMs ?? 5000;
  }

  #call<Res>(method: string, req: unknown): Promise<Res> {
    return call<unknown, Res>(this.#client, method, req, this.#timeout, this.#what);
  }

  async readPodLog(podId: string, lines = 50): Promise<string> {
    return (await this.#call<{ log: string }>("ReadPodLog", { pod_id: podId, lines })).log;
  }

  /** Closes the channel. */
  close(): void {
    this.#client.close();
  }
}
