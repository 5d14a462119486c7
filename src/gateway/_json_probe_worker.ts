/**
 * The worker side of `JsonProbe` (`json_probe.ts`): reads each body it is
 * sent and answers what it holds, in turn.
 *
 * @module
 */
/// <reference lib="deno.worker" />
import { probeJson, type ProbeReply, type ProbeRequest } from "./json_probe.ts";

self.onmessage = (e: MessageEvent<ProbeRequest>) => {
  self.postMessage({ id: e.data.id, ...probeJson(e.data.bytes) } satisfies ProbeReply);
};
