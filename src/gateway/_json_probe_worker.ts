/**
 * The worker side of `JsonProbe` (`json_probe.ts`): reads each body it is
 * sent and answers what it holds, in turn.
 *
 * @module
 */
/// <reference lib="deno.worker" />
import {
  checkJson,
  compactObject,
  probeJson,
  type ProbeReply,
  type ProbeRequest,
} from "./json_probe.ts";

self.onmessage = ({ data: { id, bytes, object, check } }: MessageEvent<ProbeRequest>) => {
  const result = check
    ? checkJson(bytes)
    : object
    ? compactObject(bytes, object)
    : probeJson(bytes);
  self.postMessage({ id, ...result } satisfies ProbeReply);
};
