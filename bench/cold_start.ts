/**
 * Cold start benchmark: time to first byte through the gateway for
 * (a) a fresh worker start, (b) a resume from the paused standby tier and
 * (c) a warm worker, measured in one run on the same platform, with the
 * ratios (b)/(a) and (c)/(b). DESIGN.md budget: paused resume under 50 ms
 * end to end. Worker: the sample n-gram model server, as a process or in a
 * container (`docker`: needs a Docker engine and `deno task image`).
 *
 * Run: `deno run -A bench/cold_start.ts [rounds] [process|docker]` (10, process).
 */
import {
  createNamespace,
  eventually,
  putObject,
  request,
  startPlatform,
} from "../tests/e2e/helpers.ts";
import { NGRAM_COMMANDS } from "../src/samples/ngram/image.ts";

const rounds = Number(Deno.args[0] ?? 10);
const runtime = Deno.args[1] ?? "process";
const p = await startPlatform({ LOG_LEVEL: "warning", INFERX_RUNTIME: runtime });

async function ttfb(
  func: string,
): Promise<{ client: number; gateway: number; resumed: boolean; cold: boolean }> {
  const t0 = performance.now();
  const res = await fetch(`${p.url}/funccall/bench/lab/${func}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt: "The GPU", max_tokens: 8 }),
  });
  const client = performance.now() - t0;
  await res.body?.cancel();
  if (res.status !== 200) throw new Error(`${func}: HTTP ${res.status}`);
  return {
    client,
    gateway: Number(res.headers.get("x-inferx-ttfb-ms")),
    resumed: res.headers.get("x-inferx-resumed") === "1",
    cold: res.headers.get("x-inferx-cold-start") === "1",
  };
}

const pods = async (f: string) =>
  (await request(`${p.url}/pods/bench/lab/${f}`)).body as { state: string }[];
const stats = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return {
    median: s[Math.floor(s.length / 2)],
    p90: s[Math.min(s.length - 1, Math.floor(s.length * 0.9))],
  };
};

try {
  const put = (body: unknown) => putObject(p.url, body);
  await createNamespace(p.url, "bench", "lab");
  for (const [name, standby] of [["fresh", 0], ["parked", 1]] as const) {
    await put({
      type: "function",
      tenant: "bench",
      namespace: "lab",
      name,
      object: {
        spec: {
          image: "inferx/ngram:latest",
          commands: NGRAM_COMMANDS,
          resources: { CPU: 250, Mem: 128 },
          policy: { Obj: { scalein_timeout: 0.2, standby_per_node: standby } },
        },
      },
    });
  }
  const fresh: number[] = [], resumed: number[] = [], warm: number[] = [];
  const freshGw: number[] = [], resumedGw: number[] = [], warmGw: number[] = [];
  for (let i = 0; i < rounds; i++) {
    await eventually("no fresh pod", async () => (await pods("fresh")).length === 0, 30_000);
    const a = await ttfb("fresh");
    if (!a.cold) throw new Error("the fresh call was not a cold start");
    fresh.push(a.client), freshGw.push(a.gateway);

    if ((await pods("parked")).length === 0) await ttfb("parked");
    await eventually(
      "a parked pod",
      async () => (await pods("parked"))[0]?.state === "Standby",
      30_000,
    );
    const b = await ttfb("parked");
    if (!b.resumed) throw new Error("the parked call was not a resume");
    resumed.push(b.client), resumedGw.push(b.gateway);

    const c = await ttfb("parked");
    if (c.resumed || c.cold) throw new Error("the warm call was not warm");
    warm.push(c.client), warmGw.push(c.gateway);
  }
  const a = stats(fresh), b = stats(resumed), c = stats(warm);
  const f = (x: number) => `${x.toFixed(2)} ms`;
  console.log(
    `cold start benchmark, ${runtime} runtime, ${rounds} rounds (${Deno.build.os}/${Deno.build.arch}, deno ${Deno.version.deno})`,
  );
  console.log(
    `(a) fresh start:        median ${f(a.median)}, p90 ${f(a.p90)} (gateway ttfb median ${
      f(stats(freshGw).median)
    })`,
  );
  console.log(
    `(b) paused-tier resume: median ${f(b.median)}, p90 ${f(b.p90)} (gateway ttfb median ${
      f(stats(resumedGw).median)
    }; budget < 50 ms)`,
  );
  console.log(
    `(c) warm:               median ${f(c.median)}, p90 ${f(c.p90)} (gateway ttfb median ${
      f(stats(warmGw).median)
    })`,
  );
  console.log(
    `ratio (b)/(a): ${(b.median / a.median).toFixed(3)}   ratio (c)/(b): ${
      (c.median / b.median).toFixed(3)
    }`,
  );
} finally {
  await p.stop();
  await Deno.remove(p.dataDir, { recursive: true });
}
