/**
 * `RUN_SERVICE=All`: every role in one process on the embedded store, wired
 * through their in-process client implementations. This is the composition
 * root; the roles themselves never import each other.
 *
 * @module
 */
import { type EnvConfig, loadNodeConfig, REPO_ROOT } from "../common/config.ts";
import { logger } from "../common/log.ts";
import * as gateway from "../gateway/mod.ts";
import * as nodeagent from "../nodeagent/mod.ts";
import * as scheduler from "../scheduler/mod.ts";
import * as statesvc from "../statesvc/mod.ts";
import { applySamples } from "../statesvc/samples.ts";
import { Registry } from "prom-client";
import { buildNgramImage, imageExists, NGRAM_IMAGE } from "../samples/ngram/image.ts";
import { openAudit, startPodAudit } from "../audit/mod.ts";

/** The running all-in-one platform. */
export interface AllHandle {
  port: number;
  stop(): Promise<void>;
}

/** Starts state service, node agent, scheduler and gateway, in that order. */
export async function start(env: EnvConfig): Promise<AllHandle> {
  const state = await statesvc.start({ dataDir: env.dataDir });
  const meta = state.service;
  if (env.samplesDir) await applySamples(meta, env.samplesDir);
  const audit = openAudit(env);
  const podAudit = await startPodAudit(meta, audit);
  const nodeInfo = await loadNodeConfig(env.nodeConfigPath);
  const node = await nodeagent.start({
    meta,
    node: nodeInfo,
    workDir: REPO_ROOT,
    snapshotDir: `${env.dataDir}/snapshots`,
    snapshotSettings: env.snapshots,
    // The store created the data directory: its real path tells this
    // platform's workers from another's on the same host.
    scope: `${nodeInfo.name}@${await Deno.realPath(env.dataDir)}`,
  });
  if (env.samplesDir && node.runtime === "docker" && !await imageExists(NGRAM_IMAGE)) {
    logger().info("Building the sample image {tag} (no registry needed)", { tag: NGRAM_IMAGE });
    await buildNgramImage();
  }
  const sched = await scheduler.start({
    meta,
    gatewayTimeoutMs: env.gatewayTimeoutMs,
    nodeTimeoutMs: env.nodeTimeoutMs,
    snapshotStart: env.snapshots.start,
  });
  const schedulerMetrics = new Registry();
  sched.service.registerMetrics(schedulerMetrics);
  const gw = await gateway.start({
    meta,
    scheduler: sched.service,
    extraRegistries: [schedulerMetrics],
    nodeAgent: (n) => n.name === node.agent.name ? node.agent : undefined,
    port: env.gatewayPort,
    hostname: env.gatewayHost,
    bodyLimit: env.bodyLimit,
    adminApiKey: env.adminApiKey,
    oidc: env.oidc,
    audit,
  });
  return {
    port: gw.port,
    async stop() {
      logger().info("Stopping");
      await gw.stop();
      await sched.stop();
      await node.stop();
      podAudit.stop();
      await audit.close();
      await state.stop();
    },
  };
}
