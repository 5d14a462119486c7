import { openSqliteStore } from "../store/sqlite.ts";
import { StateService } from "../statesvc/service.ts";
import { metaContract } from "./meta_contract.ts";
import { GrpcMetaClient, serveMeta } from "./meta_grpc.ts";

metaContract("MetaClient in-process", async () => {
  const store = await openSqliteStore();
  return { meta: new StateService(store), dispose: () => store.close() };
});

metaContract("MetaClient over gRPC", async () => {
  const store = await openSqliteStore();
  const server = await serveMeta(new StateService(store), "127.0.0.1:0");
  const meta = new GrpcMetaClient(`127.0.0.1:${server.port}`);
  return {
    meta,
    async dispose() {
      meta.close();
      await server.stop();
      await store.close();
    },
  };
});
