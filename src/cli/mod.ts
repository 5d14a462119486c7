/**
 * `inferx ctl`: the command line for a running gateway, in the same
 * executable (`deno run -A main.ts ctl ...`).
 *
 *   ctl apply -f FILE|DIR [--dry-run] [-l SELECTOR [--prune [--yes]]]
 *                                 create or update the objects in FILE or DIR (JSON or YAML)
 *   ctl diff -f FILE|DIR [-l SELECTOR [--prune]]   what apply would change, field by field
 *   ctl get TYPE T/NS/NAME        print one object
 *   ctl list TYPE T/NS            list the objects of a namespace
 *   ctl delete TYPE T/NS/NAME     delete one object
 *   ctl call T/NS/FUNC [PATH] [-d JSON] [--async [--callback URL]]   call a function
 *                                 (PATH defaults to /v1/completions); --async prints the call's id
 *   ctl calls get ID | cancel ID | list [--func T/NS/FUNC] [--status S] | secret TENANT [--rotate]
 *   ctl apikey create SCOPE [T[/NS]] [--name N] [--expires S]   create an API key (printed once)
 *   ctl apikey list | revoke ID
 *   ctl rollout status|promote|rollback T/NS/FUNC   a function's versions and traffic split
 *
 * `--gateway URL` (env `INFERX_GATEWAY`, default http://127.0.0.1:4000);
 * `--key KEY` (env `INFERX_APIKEY`): the API key or token sent as a bearer;
 * `--timeout SECONDS`: the longest wait for an answer (60 s for the API,
 * 15 minutes for a call). An option or argument a command does not take is
 * refused.
 * Exits 1 with the gateway's message on any error (`diff`: 0 without
 * differences, 1 with, 2 on an error).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { type Answer, answerOf, CliError, ensureOk, type Io, readLine } from "./_shared.ts";
import { applyObjects, diffObjects } from "./apply.ts";
import { exportObjects } from "./export.ts";

/**
 * How the command line is run here: as `INFERX_CTL_NAME` says (the role
 * images: `docker run --rm IMAGE ctl`), else the compiled binary by its
 * name, else the repository's task (no `inferx` is on a path then).
 */
const CTL = Deno.env.get("INFERX_CTL_NAME") ||
  (Deno.build.standalone
    ? `${Deno.execPath().slice(Deno.execPath().lastIndexOf("/") + 1)} ctl`
    : "deno task ctl");

const USAGE = `usage: ${CTL} [--gateway URL] <command>
  apply -f FILE|DIR             create or update the objects in FILE or DIR (JSON or YAML);
                                an object equal to the stored one is left unchanged
    --dry-run                   validate on the server, write nothing
    -l SELECTOR                 only objects whose labels match (key=value,key!=value,key)
    --prune [--yes]             with -l: delete applied objects of the same namespaces that
                                FILE or DIR no longer has (asks first unless --yes)
  diff -f FILE|DIR [-l SELECTOR [--prune]]
                                what apply would change, field by field (exit 1 if anything)
  export [TENANT[/NS]] [-l SELECTOR]
                                every tenant, namespace, policy and function you may read,
                                as YAML that apply -f takes back (a backup, a copy)
  get TYPE TENANT/NS/NAME       print one object
  list TYPE TENANT/NS           list the objects of a namespace
  delete TYPE TENANT/NS/NAME    delete one object
  call TENANT/NS/FUNC [PATH] [-d JSON] [--async [--callback URL]]
                                call a function (PATH defaults to /v1/completions);
                                --async queues it and prints its id
  calls get ID                  an asynchronous call: status, attempts, result
  calls cancel ID               cancel a queued or running call
  calls list [--func TENANT/NS/FUNC] [--status STATUS]   your calls, newest first
  calls secret TENANT [--rotate]   the secret that signs the tenant's callbacks
  apikey create SCOPE [TENANT[/NS]] [--name NAME] [--expires SECONDS]
                                create an API key (full, read or inference); printed once
  apikey list                   list the keys you may manage
  apikey revoke ID              revoke a key
  rollout status TENANT/NS/FUNC   the versions kept and the share of calls each takes
  rollout promote TENANT/NS/FUNC [--version N]   the newest version takes every call
  rollout rollback TENANT/NS/FUNC [--version N]  an older version takes every call again (the
                                stable one; under traffic, the one with the largest share);
                                --version: the newest version you saw (another one there: refused)
options: --gateway URL (env INFERX_GATEWAY), --key KEY (env INFERX_APIKEY),
  --timeout SECONDS (the longest wait for an answer: 60 for the API, 900 for a call);
  -f may be given more than once`;

/** Options every command takes. */
const GLOBAL_OPTIONS = new Set(["gateway", "key", "timeout", "help"]);

/** The options each command takes besides the global ones, and its most arguments. */
const TAKES: Record<string, { options: string[]; args: number }> = {
  apply: { options: ["file", "dry-run", "selector", "prune", "yes"], args: 0 },
  diff: { options: ["file", "selector", "prune"], args: 0 },
  export: { options: ["selector"], args: 1 },
  get: { options: [], args: 2 },
  list: { options: [], args: 2 },
  delete: { options: [], args: 2 },
  call: { options: ["data", "async", "callback"], args: 2 },
  calls: { options: ["func", "status", "rotate"], args: 2 },
  apikey: { options: ["name", "expires"], args: 3 },
  rollout: { options: ["version"], args: 2 },
};

/**
 * What each subcommand takes, where a command has them: `apikey revoke A B`
 * would revoke A alone, and `apikey list --name x` list every key, each
 * saying nothing of the rest.
 */
const SUBCOMMAND_TAKES: Record<string, Record<string, { options: string[]; args: number }>> = {
  calls: {
    get: { options: [], args: 2 },
    cancel: { options: [], args: 2 },
    list: { options: ["func", "status"], args: 1 },
    secret: { options: ["rotate"], args: 2 },
  },
  apikey: {
    create: { options: ["name", "expires"], args: 3 },
    list: { options: [], args: 1 },
    revoke: { options: [], args: 2 },
  },
};

/** The longest waits for an answer (ms) unless `--timeout` says: of the API, and of a call. */
const WAITS = { api: 60_000, call: 15 * 60_000 } as const;
/** The waits of the command running. */
const waits: { api: number; call: number } = { ...WAITS };

/** `url` without credentials, for messages. */
function shown(url: string): string {
  try {
    const u = new URL(url);
    if (!u.username && !u.password) return url;
    u.username = u.password = "";
    return u.toString().replace(/\/$/, "");
  } catch {
    return url;
  }
}

/** The error of a request that got no answer: why, as the runtime tells it. */
function unreachable(gateway: string, err: unknown, waitMs: number): CliError {
  const e = err as Error & { cause?: { message?: string } };
  if (e?.name === "TimeoutError") {
    return new CliError(
      `The gateway at ${shown(gateway)} did not answer within ${waitMs / 1000} s (--timeout)`,
    );
  }
  const cause = e?.cause?.message ? `: ${e.cause.message}` : "";
  return new CliError(`Cannot reach the gateway at ${shown(gateway)}: ${e?.message}${cause}`);
}

/** The bearer credential for every request, when one is given. */
let bearer: string | undefined;
const authHeaders = (): Record<string, string> =>
  bearer ? { authorization: `Bearer ${bearer}` } : {};

/** Sends one request; answers its status and body, whatever the status. */
async function send(
  gateway: string,
  method: string,
  path: string,
  body?: unknown,
  extra: Record<string, string> = {},
): Promise<Answer> {
  let res: Response;
  let text: string;
  try {
    res = await fetch(`${gateway}${path}`, {
      method,
      headers: body === undefined
        ? { ...extra, ...authHeaders() }
        : { "content-type": "application/json", ...extra, ...authHeaders() },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(waits.api),
    });
    text = await res.text();
  } catch (err) {
    throw unreachable(gateway, err, waits.api);
  }
  // The gateway answers its API in JSON: anything else is another server (a proxy's page).
  const type = res.headers.get("content-type") ?? "";
  if (text && !/^application\/(.+\+)?json\b/i.test(type)) {
    throw new CliError(
      `Unexpected answer from ${shown(gateway)}${path}: ${res.status} ${
        type || "without a content type"
      }, not JSON: is ${shown(gateway)} an InferX gateway?`,
    );
  }
  return answerOf(res.status, text);
}

async function http(
  gateway: string,
  method: string,
  path: string,
  body?: unknown,
  extra: Record<string, string> = {},
) {
  const a = ensureOk(method, path, await send(gateway, method, path, body, extra));
  return a.json as Record<string, unknown>;
}

/** `what`'s parts, each escaped for a path (a `#` or `?` in a name is part of it). */
function ref(what: string, parts: number): string[] {
  const p = what.split("/");
  if (p.length !== parts || p.some((x) => !x)) {
    throw new CliError(
      `Expected ${parts === 3 ? "TENANT/NAMESPACE/NAME" : "TENANT/NAMESPACE"}, got "${what}"`,
    );
  }
  return p.map(encodeURIComponent);
}

async function call(
  gateway: string,
  target: string,
  path: string,
  data: string | undefined,
  io: Io,
  queued?: { callback?: string },
) {
  const [t, ns, f] = ref(target, 3);
  let body: string | undefined;
  if (data !== undefined) {
    try {
      body = JSON.stringify(JSON.parse(data));
    } catch (err) {
      throw new CliError(`-d is not valid JSON: ${(err as Error).message}`);
    }
  }
  if (queued) return await callAsync(gateway, [t, ns, f], path, body, queued.callback, io);
  const t0 = performance.now();
  // A progress line while the call waits (a cold start can take a while).
  const progress = setInterval(
    () => io.err(`waiting for ${t}/${ns}/${f}: ${((performance.now() - t0) / 1000).toFixed(1)} s`),
    1000,
  );
  let res: Response;
  try {
    res = await fetch(
      `${gateway}/funccall/${t}/${ns}/${f}${path.startsWith("/") ? path : `/${path}`}`,
      {
        method: body === undefined ? "GET" : "POST",
        headers: body === undefined
          ? authHeaders()
          : { "content-type": "application/json", ...authHeaders() },
        body,
        signal: AbortSignal.timeout(waits.call),
      },
    );
  } catch (err) {
    throw unreachable(gateway, err, waits.call);
  } finally {
    clearInterval(progress);
  }
  const cold = res.headers.get("x-inferx-cold-start") === "1";
  const resumed = res.headers.get("x-inferx-resumed") === "1";
  const ttfb = res.headers.get("x-inferx-ttfb-ms");
  let text: string;
  try {
    text = await res.text(); // under the same --timeout as the head
  } catch (err) {
    throw unreachable(gateway, err, waits.call);
  }
  if (!res.ok) {
    let message = text;
    try {
      message = JSON.parse(text).error?.message ?? text;
    } catch {
      // not JSON
    }
    throw new CliError(`call ${target}: ${res.status} ${message}`);
  }
  io.err(`${cold ? "cold start" : resumed ? "resumed" : "warm"}, first byte after ${ttfb} ms`);
  io.out(text);
}

/** Queues a call (`Prefer: respond-async`) and prints its id. */
async function callAsync(
  gateway: string,
  [t, ns, f]: string[],
  path: string,
  body: string | undefined,
  callback: string | undefined,
  io: Io,
) {
  const res = await http(
    gateway,
    body === undefined ? "GET" : "POST",
    `/funccall/${t}/${ns}/${f}${path.startsWith("/") ? path : `/${path}`}`,
    body === undefined ? undefined : JSON.parse(body),
    { prefer: "respond-async", ...(callback ? { "x-inferx-callback-url": callback } : {}) },
  );
  io.err(`accepted; see: ${CTL} calls get ${res.id}`);
  io.out(String(res.id));
}

async function calls(
  gw: string,
  sub: string | undefined,
  arg: string | undefined,
  opts: { func?: string; status?: string; rotate?: boolean },
  io: Io,
) {
  switch (sub) {
    case "get":
      if (!arg) throw new CliError("usage: calls get ID");
      io.out(JSON.stringify(await http(gw, "GET", `/calls/${encodeURIComponent(arg)}`), null, 2));
      return;
    case "cancel": {
      if (!arg) throw new CliError("usage: calls cancel ID");
      const c = await http(gw, "DELETE", `/calls/${encodeURIComponent(arg)}`);
      io.out(`${c.status} ${arg}`);
      return;
    }
    case "list": {
      const q = new URLSearchParams();
      if (opts.func) q.set("func", opts.func);
      if (opts.status) q.set("status", opts.status);
      const res = await http(gw, "GET", `/calls${q.size ? `?${q}` : ""}`);
      for (const c of res.items as Record<string, unknown>[]) {
        io.out(
          `${c.id}\t${c.status}\t${c.function}\t${c.accepted_at}\tattempts ${c.attempts}` +
            (c.status_code === undefined ? "" : `\tstatus ${c.status_code}`),
        );
      }
      return;
    }
    case "secret": {
      if (!arg) throw new CliError("usage: calls secret TENANT [--rotate]");
      const path = `/calls/callback-secret/${encodeURIComponent(arg)}`;
      io.out(String((await http(gw, opts.rotate ? "POST" : "GET", path)).secret));
      return;
    }
    default:
      throw new CliError("usage: calls get|cancel|list|secret ...");
  }
}

async function apikey(
  gw: string,
  sub: string | undefined,
  arg: string | undefined,
  where: string | undefined,
  opts: { name?: string; expires?: string },
  io: Io,
) {
  switch (sub) {
    case "create": {
      if (!arg) throw new CliError("usage: apikey create SCOPE [TENANT[/NS]]");
      const parts = where ? where.split("/") : [];
      if (parts.length > 2 || parts.some((p) => !p)) {
        throw new CliError(`Expected TENANT or TENANT/NAMESPACE, got "${where}"`);
      }
      const [tenant, namespace] = parts;
      const expires = opts.expires === undefined ? undefined : Number(opts.expires);
      if (expires !== undefined && !(expires > 0)) {
        throw new CliError(`--expires "${opts.expires}": a positive number of seconds`);
      }
      const k = await http(gw, "POST", "/apikeys", {
        scope: arg,
        tenant,
        namespace,
        name: opts.name,
        expires_in_s: expires,
      });
      io.err(`created ${k.scope} key ${k.id}${tenant ? ` for ${where}` : ""}; it is shown once:`);
      io.out(String(k.key));
      return;
    }
    case "list": {
      const res = await http(gw, "GET", "/apikeys");
      for (const k of res.items as Record<string, string | null>[]) {
        const reach = k.tenant ? `${k.tenant}${k.namespace ? `/${k.namespace}` : ""}` : "*";
        io.out(
          `${k.id}\t${k.scope}\t${reach}\t${k.name || "-"}\texpires ${k.expires_at ?? "never"}`,
        );
      }
      return;
    }
    case "revoke":
      if (!arg) throw new CliError("usage: apikey revoke ID");
      await http(gw, "DELETE", `/apikeys/${encodeURIComponent(arg)}`);
      io.out(`revoked ${arg}`);
      return;
    default:
      throw new CliError("usage: apikey create|list|revoke ...");
  }
}

async function rollout(
  gw: string,
  action: string | undefined,
  target: string | undefined,
  version: string | undefined,
  io: Io,
) {
  if (!action || !["status", "promote", "rollback"].includes(action) || !target) {
    throw new CliError("usage: rollout status|promote|rollback TENANT/NS/FUNC [--version N]");
  }
  if (
    version !== undefined &&
    (action === "status" || !/^[1-9]\d*$/.test(version) || !Number.isSafeInteger(Number(version)))
  ) {
    throw new CliError(
      action === "status"
        ? "rollout status does not take --version"
        : `--version "${version}": the newest version you saw, a whole number from 1 to ${Number.MAX_SAFE_INTEGER}`,
    );
  }
  const [t, ns, f] = ref(target, 3);
  const path = `/rollout/${t}/${ns}/${f}`;
  let r;
  if (action === "status") r = await http(gw, "GET", path);
  else {
    const at = `${path}/${action}${version ? `?version=${version}` : ""}`;
    const a = await send(gw, "POST", at);
    // A gateway of a release before `?version=` refuses the parameter: said in the CLI's terms.
    if (
      version && a.status === 400 && a.json?.error?.details?.field === "version" &&
      /unknown parameter "version"/.test(a.json.error.message)
    ) {
      throw new CliError(
        `POST ${at}: 400 ${a.json.error.message}: this gateway is of an earlier release, ` +
          `which takes no --version (upgrade it, or leave --version out: then the version the ` +
          `gateway sees is rolled out)`,
      );
    }
    r = ensureOk("POST", at, a).json;
  }
  const traffic = (r.traffic as { version: number; percent: number }[])
    .map((s) => `v${s.version} ${s.percent}%`).join(", ");
  io.out(
    `${r.function}: version ${r.version}, stable ${r.stable_version}, traffic ${traffic}`,
  );
}

/** Runs `ctl` with `args`; returns the exit status. */
export async function runCtl(
  args: string[],
  io: Io = {
    out: (s) => console.log(s),
    err: (s) => console.error(s),
    ask: (q) => (Deno.stderr.writeSync(new TextEncoder().encode(q)), readLine()),
  },
): Promise<number> {
  let failure = 1;
  try {
    const options = {
      gateway: {
        type: "string",
        // Set empty (a compose file's `${INFERX_GATEWAY:-}`): the default, as for the key.
        default: Deno.env.get("INFERX_GATEWAY") || "http://127.0.0.1:4000",
      },
      key: { type: "string", default: Deno.env.get("INFERX_APIKEY") },
      name: { type: "string" },
      expires: { type: "string" },
      file: { type: "string", short: "f", multiple: true },
      timeout: { type: "string" },
      data: { type: "string", short: "d" },
      "dry-run": { type: "boolean" },
      selector: { type: "string", short: "l", multiple: true },
      prune: { type: "boolean" },
      yes: { type: "boolean", short: "y" },
      async: { type: "boolean" },
      callback: { type: "string" },
      func: { type: "string" },
      status: { type: "string" },
      rotate: { type: "boolean" },
      version: { type: "string" },
      help: { type: "boolean", short: "h" },
    } as const;
    // `diff` exits 1 for differences: its usage errors must say 2, found before the strict parse.
    if (
      parseArgs({ args, options, allowPositionals: true, strict: false }).positionals[0] === "diff"
    ) {
      failure = 2;
    }
    const { values, positionals } = parseArgs({ args, allowPositionals: true, options });
    const gw = values.gateway!.replace(/\/$/, "");
    // Given twice, the last alone was taken, unsaid (a prune then deleted more than meant).
    if ((values.selector?.length ?? 0) > 1) {
      throw new CliError(
        `-l may be given once: join its terms with commas (-l ${values.selector!.join(",")})`,
      );
    }
    const selector = values.selector?.[0];
    bearer = values.key || undefined;
    const [cmd, a, b, c] = positionals;
    if (values.help || !cmd) {
      io.out(USAGE);
      return values.help ? 0 : 1;
    }
    const sub = a === undefined ? undefined : SUBCOMMAND_TAKES[cmd]?.[a];
    const takes = sub ?? TAKES[cmd];
    const named = sub ? `${cmd} ${a}` : cmd;
    if (takes) {
      for (const [k, v] of Object.entries(values)) {
        if (v !== undefined && !GLOBAL_OPTIONS.has(k) && !takes.options.includes(k)) {
          throw new CliError(`${named} does not take --${k}`);
        }
      }
      if (positionals.length > takes.args + 1) {
        throw new CliError(`${named}: unexpected argument "${positionals[takes.args + 1]}"`);
      }
    }
    Object.assign(waits, WAITS);
    if (values.timeout !== undefined) {
      const s = Number(values.timeout);
      // A timer's most (2^31 - 1 ms, about 24.8 days): past it, it fires at once.
      if (!(s > 0) || s * 1000 > 2 ** 31 - 1) {
        throw new CliError(
          `--timeout "${values.timeout}": a positive number of seconds, 2147483 at most`,
        );
      }
      waits.api = waits.call = s * 1000;
    }
    switch (cmd) {
      case "apply":
      case "diff": {
        if (!values.file) throw new CliError(`${cmd} needs -f FILE or -f DIR`);
        const ctl = {
          send: (method: string, path: string, body?: unknown) => send(gw, method, path, body),
          io,
        };
        const apply = {
          dryRun: values["dry-run"],
          selector,
          prune: values.prune,
          yes: values.yes,
        };
        if (cmd === "apply") {
          await applyObjects(ctl, values.file, apply);
          return 0;
        }
        return await diffObjects(ctl, values.file, apply) ? 1 : 0;
      }
      case "export":
        await exportObjects({ send: (m, p, body) => send(gw, m, p, body), io }, {
          scope: a,
          selector,
        });
        return 0;
      case "get": {
        if (!a || !b) throw new CliError("usage: get TYPE TENANT/NS/NAME");
        const [t, ns, n] = ref(b, 3);
        const type = encodeURIComponent(a);
        io.out(JSON.stringify(await http(gw, "GET", `/object/${type}/${t}/${ns}/${n}`), null, 2));
        return 0;
      }
      case "list": {
        if (!a || !b) throw new CliError("usage: list TYPE TENANT/NS");
        const [t, ns] = ref(b, 2);
        const res = await http(gw, "GET", `/objects/${encodeURIComponent(a)}/${t}/${ns}`);
        for (const o of res.items as { name: string; revision: number; version?: number }[]) {
          io.out(`${o.name}\trevision ${o.revision}${o.version ? `\tversion ${o.version}` : ""}`);
        }
        return 0;
      }
      case "delete": {
        if (!a || !b) throw new CliError("usage: delete TYPE TENANT/NS/NAME");
        const [t, ns, n] = ref(b, 3);
        await http(gw, "DELETE", `/object/${encodeURIComponent(a)}/${t}/${ns}/${n}`);
        io.out(`deleted ${a} ${b}`);
        return 0;
      }
      case "call":
        if (!a) throw new CliError("usage: call TENANT/NS/FUNC [PATH] [-d JSON] [--async]");
        if (values.callback && !values.async) throw new CliError("--callback needs --async");
        await call(
          gw,
          a,
          b ?? "/v1/completions",
          values.data,
          io,
          values.async ? { callback: values.callback } : undefined,
        );
        return 0;
      case "calls":
        await calls(gw, a, b, values, io);
        return 0;
      case "apikey":
        await apikey(gw, a, b, c, values, io);
        return 0;
      case "rollout":
        await rollout(gw, a, b, values.version, io);
        return 0;
      default:
        throw new CliError(`Unknown command "${cmd}"\n${USAGE}`);
    }
  } catch (err) {
    io.err(err instanceof CliError ? err.message : `error: ${(err as Error).message}`);
    return failure;
  }
}
