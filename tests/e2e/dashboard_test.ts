/**
 * The dashboard in a real browser against a running platform with auth on
 * and two declared 80 GB GPUs (`config/node.gpus.json`): the sign-in prompt,
 * the sample function listed, GPU bars that follow two functions' pods
 * without a reload, a log line with markup shown as text, the playground
 * streaming a cold start and cancelling a warm call, an API key created and
 * revoked, and a refused terminate showing the API's message. Screenshots
 * go to a temporary directory (or `INFERX_SCREENSHOTS`) and must not be
 * blank.
 */
import assert from "node:assert/strict";
import type { Page } from "puppeteer-core";
import { chromiumUnavailable, launchChromium, pixelStats } from "./browser.ts";
import { createNamespace, eventually, putObject, request, startPlatform } from "./helpers.ts";

/** The page's document, as the functions run in the browser see it. */
declare const document: {
  querySelector(selector: string): { textContent: string | null } | null;
  querySelectorAll(selector: string): Iterable<{ textContent: string | null }>;
  dispatchEvent(event: Event): boolean;
};

const skip = chromiumUnavailable();
if (skip) console.log(`Skipping the dashboard browser test: ${skip}`);

const ADMIN_KEY = "dashboard-admin-key-0123456789";
const ADMIN = { authorization: `Bearer ${ADMIN_KEY}` };
const CONFIG = new URL("../../config/", import.meta.url).pathname;
/** Function names as odd as names may be. */
const LLAMA = "llama-7b";
const MISTRAL = "mistral.v2-instruct_q4";

/** A worker that prints markup at start, answers `/` at once and streams `/slow` for 10 s. */
const WORKER = `console.log('<script>alert("pwned")</script> weights loaded');
Deno.serve({ port: Number(Deno.env.get("PORT")), hostname: Deno.env.get("HOST"), onListen() {} }, (req) => {
  if (!new URL(req.url).pathname.startsWith("/slow")) return new Response("ok");
  let n = 0, timer;
  return new Response(new ReadableStream({
    start(c) { timer = setInterval(() => n++ < 100 ? c.enqueue(new TextEncoder().encode("tick " + n + "\\n")) : c.close(), 100); },
    cancel() { clearInterval(timer); },
  }));
});`;

const gpuFunction = (name: string) => ({
  type: "function",
  tenant: "gpu",
  namespace: "lab",
  name,
  object: {
    spec: {
      image: "lab/worker",
      commands: ["deno", "eval", WORKER],
      resources: { CPU: 100, Mem: 64, GPU: { Type: "H100", Count: 1, vRam: 30000 } },
      policy: { Obj: { scalein_timeout: 300, standby_per_node: 0 } },
    },
  },
});

const text = (page: Page, selector: string) =>
  page.$eval(selector, (e) => e.textContent ?? "").catch(() => "");

Deno.test({
  name:
    "the dashboard signs in, lists functions, draws live GPU slices, streams the playground and manages keys in Chromium",
  ignore: skip !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const shots = Deno.env.get("INFERX_SCREENSHOTS") ??
      await Deno.makeTempDir({ prefix: "inferx-dashboard-" });
    await Deno.mkdir(shots, { recursive: true });
    const p = await startPlatform({
      NODE_CONFIG: `${CONFIG}node.gpus.json`,
      INFERX_SAMPLES: `${CONFIG}functions`,
      INFERX_ADMIN_APIKEY: ADMIN_KEY,
    });
    const chromium = await launchChromium();
    try {
      const page = await chromium.browser.newPage();
      await page.setViewport({ width: 1280, height: 860 });
      const dialogs: string[] = [];
      page.on("dialog", (d) => {
        dialogs.push(d.message());
        d.dismiss().catch(() => {});
      });
      const pageErrors: string[] = [];
      page.on("pageerror", (e) => pageErrors.push(String(e)));
      const shot = async (name: string) => {
        const png = await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
        const s = pixelStats(png);
        assert.ok(s.stddev > 8 && s.colors > 40, `${name}.png looks blank: ${JSON.stringify(s)}`);
      };

      // With auth on, a page asks for a key, with the API's 401 message.
      await page.goto(`${p.url}/ui`);
      await page.waitForSelector("#login:not([hidden])");
      assert.match(await text(page, "#login-reason"), /Credentials required/);
      await shot("login");
      // A masked key (as the examples show it) is refused by the form, and not kept.
      await page.type("#login input[name=credential]", "ixk_Md_H••••••••");
      await page.click("#login button[type=submit]");
      await page.waitForFunction(
        () => /not a credential/.test(document.querySelector("#login-reason")?.textContent ?? ""),
      );
      assert.equal(await page.evaluate(() => sessionStorage.getItem("inferx.credential")), null);
      await page.$eval(
        "#login input[name=credential]",
        (e) => (e as unknown as { value: string }).value = "",
      );
      await page.type("#login input[name=credential]", ADMIN_KEY);
      await Promise.all([page.waitForNavigation(), page.click("#login button[type=submit]")]);
      await page.waitForSelector('tr[data-func="public/demo/ngram"]');
      assert.equal(await text(page, "#who"), "admin");
      await shot("functions");

      // Two functions' pods share GPU 0; the open nodes page follows without a reload.
      await createNamespace(p.url, "gpu", "lab", ADMIN);
      for (const name of [LLAMA, MISTRAL]) {
        const r = await putObject(p.url, gpuFunction(name), ADMIN);
        assert.equal(r.status, 201, JSON.stringify(r.body));
      }
      await page.goto(`${p.url}/ui/nodes`);
      await page.waitForSelector('#live[data-state="on"]');
      await page.evaluate(() => (globalThis as { stayed?: boolean }).stayed = true);
      const pods: Record<string, string> = {};
      for (const name of [LLAMA, MISTRAL]) {
        const r = await request(`${p.url}/funccall/gpu/lab/${name}/`, { headers: ADMIN });
        assert.equal(r.status, 200, JSON.stringify(r.body));
        pods[name] = r.headers.get("x-inferx-pod")!;
      }
      for (const name of [LLAMA, MISTRAL]) {
        await page.waitForSelector(`.gpu[data-gpu="0"] .slice[data-func="gpu/lab/${name}"]`);
      }
      assert.equal(
        await page.evaluate(() => (globalThis as { stayed?: boolean }).stayed),
        true,
        "the page was updated in place",
      );
      assert.match(await text(page, '.gpu[data-gpu="0"] .gpu-label'), /59\.6 GB of 80 GB held/);
      await shot("nodes");
      // A hidden tab lets its event stream go (six would take every connection a browser
      // opens to the gateway) and follows again when shown.
      const setHidden = (hidden: boolean) =>
        page.evaluate((h) => {
          Object.defineProperty(document, "hidden", { value: h, configurable: true });
          document.dispatchEvent(new Event("visibilitychange"));
        }, hidden);
      await setHidden(true);
      await page.waitForSelector('#live[data-state="off"]');
      assert.match(await text(page, "#live"), /paused while hidden/);
      await setHidden(false);
      await page.waitForSelector('#live[data-state="on"]');
      // Changes that keep coming (a pod parked and resumed at every call) are drawn as they
      // come, a few times a second, not put off until they stop.
      const reloads: number[] = [];
      const onRequest = (r: { url(): string }) =>
        r.url().endsWith("/ui/part/nodes/body") && reloads.push(Date.now());
      page.on("request", onRequest);
      const burstStart = Date.now();
      await page.evaluate(async () => {
        const { refreshLive } = await import("/ui/static/app.js");
        for (let i = 0; i < 40; i++) {
          refreshLive();
          await new Promise((r) => setTimeout(r, 50));
        }
      });
      const burstEnd = Date.now();
      page.off("request", onRequest);
      assert.ok(
        reloads.filter((t) => t < burstEnd).length >= 4,
        `reloads during 2 s of changes every 50 ms: ${reloads.map((t) => t - burstStart)}`,
      );

      // A log line with markup is text, not markup.
      await page.goto(`${p.url}/ui/pods`);
      const logButton = `button[data-action="log"][data-pod="${pods[LLAMA]}"]`;
      await page.waitForSelector(logButton);
      await page.click(logButton);
      await page.waitForFunction(
        () => document.querySelector("#log-panel pre")?.textContent?.includes("weights loaded"),
      );
      assert.match(await text(page, "#log-panel pre"), /<script>alert\("pwned"\)<\/script>/);
      assert.equal((await page.$$("#main script")).length, 0);
      await shot("pods");

      // The playground streams the sample function's answer from a cold start.
      await page.goto(`${p.url}/ui/functions/public/demo/ngram`);
      await page.waitForSelector("#playground");
      await page.$eval(
        "#playground textarea[name=prompt]",
        (e) => (e as unknown as { value: string }).value = "",
      );
      await page.type("#playground textarea[name=prompt]", "The GPU");
      await page.click("#playground button[name=send]");
      await page.waitForSelector('#playground[data-state="done"]', { timeout: 60_000 });
      const stat = (s: string) => text(page, `#playground [data-stat="${s}"]`);
      assert.equal(await stat("start"), "cold start");
      assert.match(await stat("status"), /^200/);
      assert.match(await stat("pod"), /^p-/);
      assert.match(await stat("ttft"), /ms$/);
      assert.match(await stat("queue"), /ms$/);
      assert.ok((await text(page, "#playground .pg-output")).trim().length > 0, "streamed text");
      // The function's pods follow too: the pod that answered appears without a reload.
      await page.waitForSelector(`.live-region tr[data-pod="${await stat("pod")}"]`);
      const example = await text(page, ".examples pre");
      assert.match(example, /authorization: Bearer \S*••••/);
      assert.ok(!example.includes(ADMIN_KEY), "the key is masked");
      await shot("playground");
      // With snapshots on (CRIU here), the version's snapshot is listed, its fields formatted.
      const snaps = await request(`${p.url}/snapshots?tenant=public&namespace=demo&func=ngram`, {
        headers: ADMIN,
      });
      if (snaps.body.items?.length) {
        await page.reload();
        await page.waitForSelector("#snapshots table");
        const heads = await page.$$eval(
          "#snapshots th",
          (ths) => ths.map((t) => (t as unknown as { textContent: string }).textContent),
        );
        assert.deepEqual(heads, [
          "Version",
          "Node",
          "State",
          "Size",
          "Dump",
          "Restores",
          "Taken",
          "Last restored",
          "From pod",
        ]);
        assert.match(await text(page, "#snapshots td:nth-child(4)"), /^\d+\.\d MB$/);
        assert.match(await text(page, "#snapshots td:nth-child(7)"), /^\d{4}-\d\d-\d\dT[\d:]+Z$/);
      }

      // A warm streaming call can be cancelled.
      await page.goto(`${p.url}/ui/functions/gpu/lab/${LLAMA}`);
      await page.waitForSelector("#playground");
      // A prompt's max tokens out of range, left behind in prompt mode, does not stop a raw send.
      await page.$eval(
        "#playground input[name=max_tokens]",
        (e) => (e as unknown as { value: string }).value = "5000",
      );
      await page.click('#playground input[name=mode][value="raw"]');
      await page.$eval(
        "#playground input[name=path]",
        (e) => (e as unknown as { value: string }).value = "",
      );
      await page.type("#playground input[name=path]", "slow");
      await page.click("#playground button[name=send]");
      await page.waitForFunction(
        () => document.querySelector("#playground .pg-output")?.textContent?.includes("tick 2"),
      );
      assert.equal(await stat("start"), "warm");
      await page.click("#playground button[name=cancel]");
      await page.waitForSelector('#playground[data-state="cancelled"]');
      assert.match(await stat("total"), /^cancelled after/);
      // The call is drawn among the function's recent calls without a reload (no pod changed).
      await page.waitForFunction(
        () =>
          [...document.querySelectorAll("table.calls tbody tr")].some((tr) =>
            tr.textContent?.includes("/slow")
          ),
        { timeout: 10_000 },
      );

      // An API key is created (shown once) and revoked. An expiry of 0 days is refused by the
      // form itself (the API wants more than 0).
      await page.goto(`${p.url}/ui/keys`);
      await page.waitForSelector("#key-form");
      // Nothing on this page follows the cluster: the header says so, not "offline".
      await page.waitForSelector('#live[data-state="none"]');
      assert.equal(await text(page, "#live"), "○ not live on this page");
      await page.type("#key-form input[name=expires_days]", "0");
      assert.equal(
        await page.$eval(
          "#key-form input[name=expires_days]",
          (e) => (e as unknown as { checkValidity(): boolean }).checkValidity(),
        ),
        false,
      );
      await page.$eval(
        "#key-form input[name=expires_days]",
        (e) => (e as unknown as { value: string }).value = "",
      );
      await page.type("#key-form input[name=name]", "ci-dashboard");
      await page.select("#key-form select[name=scope]", "read");
      // A namespace without its tenant is refused; the banner goes once the key is made.
      await page.type("#key-form input[name=namespace]", "demo");
      await page.click("#key-form button[type=submit]");
      await page.waitForSelector(".flash-error:not([hidden])");
      await page.type("#key-form input[name=tenant]", "public");
      await page.click("#key-form button[type=submit]");
      await page.waitForSelector("#new-key:not([hidden])");
      assert.equal(
        await page.$eval("#flash", (e) => (e as unknown as { hidden: boolean }).hidden),
        true,
      );
      assert.match(await text(page, "#new-key .new-key-secret"), /^ixk_/);
      const keyId = await text(page, "#new-key .new-key-id");
      await page.waitForSelector(`tr[data-key-id="${keyId}"]`);
      await shot("keys");
      const revoke = `button[data-action="revoke"][data-key-id="${keyId}"]`;
      await page.click(revoke);
      await page.click(revoke);
      await page.waitForFunction(
        (id) => !document.querySelector(`tr[data-key-id="${id}"]`),
        {},
        keyId,
      );
      assert.equal((await request(`${p.url}/apikeys/${keyId}`, { headers: ADMIN })).status, 404);

      // A key that may only read sees the API's refusal when it tries to terminate.
      const reader = await request(`${p.url}/apikeys`, {
        headers: ADMIN,
        body: { scope: "read", tenant: "gpu", name: "reader" },
      });
      assert.equal(reader.status, 201);
      await page.evaluate((k) => sessionStorage.setItem("inferx.credential", k), reader.body.key);
      await page.goto(`${p.url}/ui/pods`);
      const terminate = `button[data-action="terminate"][data-pod="${pods[MISTRAL]}"]`;
      await page.waitForSelector(terminate);
      assert.equal(await page.$('tr[data-func="public/demo/ngram"]'), null, "only tenant gpu");
      await page.click(terminate);
      await page.click(terminate);
      await page.waitForSelector(".flash-error:not([hidden])");
      assert.match(await text(page, "#flash"), /may not write in gpu\/lab/);

      // The administrator terminates it, the second click 2.5 s after the first (live updates
      // do not draw the armed button anew meanwhile); the table follows.
      await page.evaluate((k) => sessionStorage.setItem("inferx.credential", k), ADMIN_KEY);
      await page.goto(`${p.url}/ui/pods`);
      await page.waitForSelector(terminate);
      await page.waitForSelector('#live[data-state="on"]');
      await page.click(terminate);
      await new Promise((r) => setTimeout(r, 2500));
      await page.click(terminate);
      await page.waitForFunction(
        (id) => {
          const row = document.querySelector(`tr[data-pod="${id}"]`);
          return !row || /Terminat/.test(row.textContent ?? "");
        },
        { timeout: 20_000 },
        pods[MISTRAL],
      );
      await eventually("the pod to go", async () => {
        const r = await request(`${p.url}/pods/gpu/lab/${MISTRAL}`, { headers: ADMIN });
        return r.body.every((x: { state: string }) => x.state.startsWith("Terminat"));
      });

      // A filter the audit refuses is said under the form, which stays to be corrected.
      await page.goto(`${p.url}/ui/audit`);
      await page.waitForSelector("#audit-form");
      await page.type("#audit-form input[name=status]", "500s");
      await Promise.all([page.waitForNavigation(), page.click("#audit-form button[type=submit]")]);
      await page.waitForSelector("#main .refused");
      assert.match(await text(page, "#main .refused"), /Invalid status "500s"/);
      assert.ok(await page.$("#audit-form"), "the form stays");
      // Switched to pod changes, the status typed for calls is not sent (it was refused).
      await page.evaluate(() => {
        const d = document as unknown as { querySelector(s: string): { value: string } };
        d.querySelector("#audit-form input[name=status]").value = "5xx";
      });
      await page.select("#audit-form select[name=kind]", "pods");
      await Promise.all([page.waitForNavigation(), page.click("#audit-form button[type=submit]")]);
      await page.waitForSelector("#audit-form");
      assert.equal(await page.$("#main .refused"), null, await text(page, "#main"));
      assert.ok(new URL(page.url()).searchParams.get("kind") === "pods", page.url());
      assert.equal(new URL(page.url()).searchParams.get("status"), null);
      assert.ok(
        await page.$eval(
          "#audit-form input[name=status]",
          (e) => (e as { disabled: boolean }).disabled,
        ),
        "drawn off for pod changes",
      );

      // Text a tenant writes stretches no table and turns no text after it around.
      const odd = gpuFunction("odd");
      odd.object.spec.image = `registry/${"a".repeat(500)}`;
      odd.object.spec.resources.GPU.Type = "\u202eH100";
      assert.equal((await putObject(p.url, odd, ADMIN)).status, 201);
      await page.evaluate((k) => sessionStorage.setItem("inferx.credential", k), ADMIN_KEY);
      await page.goto(`${p.url}/ui`);
      await page.waitForSelector('tr[data-func="gpu/lab/odd"]');
      const width = await page.evaluate(() =>
        (document as unknown as { documentElement: { scrollWidth: number } }).documentElement
          .scrollWidth
      );
      assert.ok(width <= 1300, `the page is ${width} px wide in a 1280 px window`);
      assert.equal(await text(page, 'tr[data-func="gpu/lab/odd"] bdi'), "\u202eH100");

      assert.deepEqual(dialogs, [], "no script ran from shown data");
      assert.deepEqual(pageErrors, []);
      console.log(`Screenshots in ${shots}`);
    } finally {
      await chromium.close();
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name:
    "the dashboard's windows of one credential share one event stream, passed on when its window closes",
  ignore: skip !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const p = await startPlatform({
      INFERX_SAMPLES: `${CONFIG}functions`,
      INFERX_ADMIN_APIKEY: ADMIN_KEY,
    });
    const chromium = await launchChromium();
    try {
      // Eight windows, each shown (tabs in the background are hidden, and hold no stream): more
      // than the six connections a browser opens to one host.
      const tabs: Page[] = [];
      /** The event streams open, by tab. */
      const open = new Map<Page, number>();
      const streams = () => [...open.values()].reduce((a, b) => a + b, 0);
      for (let i = 0; i < 8; i++) {
        const tab = await chromium.browser.newPage({ type: "window" });
        open.set(tab, 0);
        const isStream = (r: { url(): string }) => r.url().endsWith("/ui/events");
        tab.on("request", (r) => isStream(r) && open.set(tab, open.get(tab)! + 1));
        for (const ended of ["requestfinished", "requestfailed"] as const) {
          tab.on(ended, (r) => isStream(r) && open.set(tab, open.get(tab)! - 1));
        }
        await tab.goto(`${p.url}/ui`);
        await tab.evaluate((k) => sessionStorage.setItem("inferx.credential", k), ADMIN_KEY);
        await tab.goto(`${p.url}/ui/pods`);
        await tab.waitForSelector('#live[data-state="on"]', { timeout: 10_000 });
        tabs.push(tab);
      }
      assert.equal(streams(), 1, "one stream for the eight tabs");
      const leader = tabs.find((t) => open.get(t) === 1)!;

      // A pod started is drawn in every tab.
      const call = await request(`${p.url}/funccall/public/demo/ngram/v1/completions`, {
        body: { prompt: "a", max_tokens: 1 },
        headers: ADMIN,
      });
      assert.equal(call.status, 200, JSON.stringify(call.body));
      const pod = call.headers.get("x-inferx-pod")!;
      for (const tab of tabs) await tab.waitForSelector(`tr[data-pod="${pod}"]`);

      // The window with the stream closes and another takes it, its request held 10 s here (a
      // gateway slow to answer): a change made meanwhile is drawn in every window, the one that
      // took the stream over included.
      const rest = tabs.filter((t) => t !== leader);
      for (const tab of rest) {
        await tab.setRequestInterception(true);
        tab.on("request", (r) => {
          if (r.url().endsWith("/ui/events")) {
            setTimeout(() => r.continue().catch(() => {}), 10_000);
          } else r.continue().catch(() => {});
        });
      }
      await leader.close();
      open.delete(leader);
      const stop = await request(`${p.url}/pods/public/demo/ngram/${pod}`, {
        method: "DELETE",
        headers: ADMIN,
      });
      assert.ok(stop.status < 300, JSON.stringify(stop.body));
      await eventually("the pod gone", async () => {
        const r = await request(`${p.url}/pods/public/demo/ngram`, { headers: ADMIN });
        return !JSON.stringify(r.body).includes(pod);
      }, 9_000);
      for (const tab of rest) {
        await tab.waitForFunction(
          (id) => !document.querySelector(`tr[data-pod="${id}"]`),
          { timeout: 20_000 },
          pod,
        );
      }
      for (const tab of rest) assert.match(await text(tab, "#live"), /live/);
      assert.equal(streams(), 1);
    } finally {
      await chromium.close();
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true }).catch(() => {});
    }
  },
});
