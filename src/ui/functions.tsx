/**
 * The functions list and one function's page: spec, policy in force,
 * versions, pods (live), snapshots (when the gateway lists them), recent
 * calls from the audit, copyable examples, and the playground.
 *
 * @module
 */
import type { RequestRow } from "../audit/types.ts";
import type { PodInfo } from "../model/cluster.ts";
import {
  type FuncPolicy,
  type FunctionSpec,
  functionSpecToJson,
  samplePathProblem,
} from "../model/schemas.ts";
import { type FunctionObject, trafficSplit } from "../model/versions.ts";
import { funcColor, mb, stateCounts } from "./cluster_view.ts";
import { Empty, FuncChip, Live, ms } from "./layout.tsx";
import { LogPanel, PodsTable } from "./pods.tsx";

/** One function as the pages show it. */
export interface FuncRow {
  tenant: string;
  namespace: string;
  name: string;
  version: number;
  revision: number;
  spec: FunctionSpec;
  /** Its pods, every version. */
  pods: PodInfo[];
  /** The versions a canary or a split keeps serving (see `trafficSplit`). */
  stableVersion?: number;
  olderVersions?: FunctionObject["olderVersions"];
}

const idOf = (f: Pick<FuncRow, "tenant" | "namespace" | "name">) =>
  `${f.tenant}/${f.namespace}/${f.name}`;

/** A function's GPUs; the type (a tenant's text) isolated, so it turns no text after it around. */
function gpuText(spec: FunctionSpec) {
  const g = spec.resources.GPU;
  if (g.Count === 0) return "–";
  return (
    <>
      {g.Count} × <bdi>{g.Type}</bdi>, {mb(g.vRam)} each
    </>
  );
}

/** The table of functions (a live region of the functions page). */
export function FunctionsTable(props: { funcs: FuncRow[]; mayCreate: boolean }) {
  if (!props.funcs.length) {
    // The way to make one, only to a credential that may.
    return (
      <Empty>
        No functions you may read.{props.mayCreate ? " Create one with PUT /object/." : ""}
      </Empty>
    );
  }
  return (
    <table class="grid" id="functions-table">
      <thead>
        <tr>
          <th>Function</th>
          <th>Version</th>
          <th>Image</th>
          <th>GPU</th>
          <th>CPU</th>
          <th>Memory</th>
          <th>Standby</th>
          <th>Pods</th>
          <th>Revision</th>
        </tr>
      </thead>
      <tbody>
        {props.funcs.map((f) => {
          const id = idOf(f);
          const sb = f.spec.standby;
          return (
            <tr data-func={id}>
              <td>
                <FuncChip id={id} color={funcColor(id)} />
              </td>
              <td>{f.version}</td>
              <td class="mono">{f.spec.image}</td>
              <td>{gpuText(f.spec)}</td>
              <td>{f.spec.resources.CPU}m</td>
              <td>{mb(f.spec.resources.Mem)}</td>
              <td class="small">gpu {sb.gpu} · pageable {sb.pageable} · pinned {sb.pinned}</td>
              <td>{stateCounts(f.pods) || "none"}</td>
              <td>{f.revision}</td>
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}

/** The functions page's part. */
export function FunctionsPage(props: { funcs: FuncRow[]; mayCreate: boolean }) {
  return (
    <>
      <h1>Functions</h1>
      <Live src="/ui/part/functions/table">
        <FunctionsTable funcs={props.funcs} mayCreate={props.mayCreate} />
      </Live>
    </>
  );
}

/** What one function's page shows. */
export interface FunctionPageProps {
  func: FuncRow;
  policy: FuncPolicy;
  /** Recent calls, newest first; undefined: the gateway keeps no audit. */
  calls?: RequestRow[];
  /** The gateway's origin, for the examples. */
  origin: string;
  /** Whether callers must send a credential. */
  authEnabled: boolean;
  now: number;
}

/** One function's page. */
export function FunctionPage(props: FunctionPageProps) {
  const f = props.func;
  const id = idOf(f);
  const split = trafficSplit(asObject(f), props.policy);
  const sample = samplePlayground(f.spec);
  return (
    <>
      <h1>
        <FuncChip id={id} color={funcColor(id)} link={false} />
      </h1>
      <div class="cols">
        <section class="card">
          <h2>Spec</h2>
          <dl class="kv">
            <dt>Image</dt>
            <dd class="mono">{f.spec.image}</dd>
            <dt>Command</dt>
            <dd class="mono">{f.spec.commands.join(" ") || "–"}</dd>
            <dt>Endpoint</dt>
            <dd class="mono">
              {f.spec.endpoint.schema} :{f.spec.endpoint.port}, probe {f.spec.endpoint.probe}
            </dd>
            <dt>Resources</dt>
            <dd>
              {f.spec.resources.CPU}m CPU, {mb(f.spec.resources.Mem)} memory, GPU {gpuText(f.spec)}
            </dd>
            <dt>Standby</dt>
            <dd>
              gpu {f.spec.standby.gpu} · pageable {f.spec.standby.pageable} · pinned{" "}
              {f.spec.standby.pinned}
            </dd>
            <dt>Version</dt>
            <dd>{f.version} (revision {f.revision})</dd>
          </dl>
          <details>
            <summary>Full spec (JSON)</summary>
            <pre class="code">{JSON.stringify(functionSpecToJson(f.spec), null, 2)}</pre>
          </details>
        </section>
        <section class="card">
          <h2>Policy in force</h2>
          <dl class="kv">
            <dt>Replicas</dt>
            <dd>{props.policy.min_replica} to {props.policy.max_replica}</dd>
            <dt>Standby per node</dt>
            <dd>{props.policy.standby_per_node}</dd>
            <dt>Parallel per pod</dt>
            <dd>{props.policy.parallel}</dd>
            <dt>Queue</dt>
            <dd>{props.policy.queue_len} long, {props.policy.queue_timeout} s timeout</dd>
            <dt>Scale out at</dt>
            <dd>wait ratio {props.policy.scaleout_policy.wait_ratio}</dd>
            <dt>Scale in after</dt>
            <dd>{props.policy.scalein_timeout} s idle</dd>
            {props.policy.canary_percent !== undefined && (
              <>
                <dt>Canary</dt>
                <dd>{props.policy.canary_percent}% of calls to the newest version</dd>
              </>
            )}
            <dt>Traffic</dt>
            <dd>{split.map((s) => `v${s.version} ${s.percent}%`).join(" · ")}</dd>
          </dl>
          <h2>Versions</h2>
          <Live src={`/ui/part/functions/${id}/versions`}>
            <Versions func={f} policy={props.policy} />
          </Live>
        </section>
      </div>
      <Playground id={id} path={sample.path} body={sample.body} prompt={sample.prompt} />
      <section class="card">
        <h2>Pods</h2>
        <Live src={`/ui/part/pods/table?func=${encodeURIComponent(id)}`}>
          <PodsTable pods={f.pods} now={props.now} />
        </Live>
        <LogPanel />
      </section>
      <section class="card" id="snapshots" data-func={id} hidden>
        <h2>Snapshots</h2>
        <div class="snapshots-body"></div>
      </section>
      <Examples
        id={id}
        origin={props.origin}
        path={sample.path}
        body={sample.body}
        authEnabled={props.authEnabled}
      />
      <section class="card">
        <h2>Recent calls</h2>
        <Live src={`/ui/part/functions/${id}/calls`}>
          <RecentCalls calls={props.calls} />
        </Live>
        <p>
          <a href={`/ui/audit?tenant=${f.tenant}&namespace=${f.namespace}&func=${f.name}`}>
            All calls of {id} in the audit
          </a>
        </p>
      </section>
    </>
  );
}

/** `f` as the version rules read it. */
function asObject(f: FuncRow): FunctionObject {
  return { ...f, type: "function" } as FunctionObject;
}

/**
 * Each version with pods or calls: the newest (current), the stable one a
 * canary leaves the rest of the calls to, each one's share of calls, and
 * the versions that take none and drain.
 */
export function Versions(props: { func: FuncRow; policy: FuncPolicy }) {
  const f = props.func;
  const shares = new Map(trafficSplit(asObject(f), props.policy).map((s) => [s.version, s]));
  const pods = new Map<number, PodInfo[]>();
  for (const p of f.pods) pods.set(p.funcVersion, [...(pods.get(p.funcVersion) ?? []), p]);
  const stable = f.stableVersion ?? f.version;
  const versions = new Set([f.version, ...shares.keys(), ...pods.keys()]);
  return (
    <ul class="versions">
      {[...versions].sort((a, b) => b - a).map((v) => {
        const share = shares.get(v);
        const tags = [
          ...(v === f.version ? ["current"] : []),
          ...(v === stable && v !== f.version ? ["stable"] : []),
          share ? `${share.percent}% of calls` : v === f.version ? "no calls" : "draining",
        ];
        return <li>v{v} ({tags.join(", ")}): {stateCounts(pods.get(v) ?? []) || "no pods"}</li>;
      })}
    </ul>
  );
}

/** A function's recent calls, or why there are none to show. */
export function RecentCalls(props: { calls?: RequestRow[] }) {
  return props.calls === undefined
    ? <Empty>This gateway keeps no audit log.</Empty>
    : <CallsTable rows={props.calls} showFunc={false} />;
}

interface Sample {
  path: string;
  body: Record<string, unknown>;
  /** The prompt field's text, when the sample is an OpenAI-style completion. */
  prompt?: string;
}

/** The playground's starting point: the function's `sample_query`, or an OpenAI completion. */
export function samplePlayground(spec: FunctionSpec): Sample {
  const q = (spec.sample_query ?? {}) as Record<string, unknown>;
  // A path stored before paths were checked, which would lead out of the function: not shown.
  const path = typeof q.path === "string" && !samplePathProblem(q.path)
    ? q.path.replace(/^\/+/, "")
    : "v1/completions";
  const body = q.body && typeof q.body === "object" && !Array.isArray(q.body)
    ? { ...(q.body as Record<string, unknown>) }
    : { prompt: "Hello", max_tokens: 16 };
  const prompt = typeof body.prompt === "string" ? body.prompt : undefined;
  return { path, body, prompt };
}

function Playground(props: { id: string; path: string; body: unknown; prompt?: string }) {
  const body = JSON.stringify(props.body, null, 2);
  return (
    <section class="card playground" id="playground" data-func={props.id}>
      <h2>Playground</h2>
      <form class="pg-form">
        <div class="pg-modes" role="radiogroup">
          <label>
            <input type="radio" name="mode" value="prompt" checked={props.prompt !== undefined} />
            {" "}
            Prompt
          </label>
          <label>
            <input type="radio" name="mode" value="raw" checked={props.prompt === undefined} />{" "}
            Raw JSON
          </label>
        </div>
        <div class="pg-prompt">
          <label>
            Prompt
            <textarea name="prompt" rows={3}>{props.prompt ?? ""}</textarea>
          </label>
          <label class="inline">
            max tokens <input type="number" name="max_tokens" min="1" max="4096" value="32" />
          </label>
        </div>
        <div class="pg-raw">
          <label class="path">
            Path <span class="mono">/funccall/{props.id}/</span>
            <input type="text" name="path" value={props.path} spellcheck={false} />
          </label>
          <label>
            Body (JSON)
            <textarea name="body" rows={6} class="mono" spellcheck={false}>{body}</textarea>
          </label>
        </div>
        <div class="pg-buttons">
          <button type="submit" class="primary" name="send">Send</button>
          <button type="button" name="cancel" disabled>Cancel</button>
        </div>
      </form>
      <dl class="pg-stats" aria-live="polite">
        <dt>Start</dt>
        <dd data-stat="start">–</dd>
        <dt>Status</dt>
        <dd data-stat="status">–</dd>
        <dt>Queue</dt>
        <dd data-stat="queue">–</dd>
        <dt>First byte</dt>
        <dd data-stat="ttfb">–</dd>
        <dt>First token</dt>
        <dd data-stat="ttft">–</dd>
        <dt>Total</dt>
        <dd data-stat="total">–</dd>
        <dt>Pod</dt>
        <dd data-stat="pod" class="mono">–</dd>
      </dl>
      <pre class="code pg-output" aria-label="Output"></pre>
    </section>
  );
}

/** Marks where the caller's (masked) key goes in an example. */
export const KEY: unique symbol = Symbol("key");

/** The curl and OpenAI-client examples of a call, as text with {@linkcode KEY} marks. */
export function callExamples(
  o: { id: string; origin: string; path: string; body: unknown; authEnabled: boolean },
): { curl: (string | typeof KEY)[]; openai: (string | typeof KEY)[] } {
  // Single-quoted for a shell: the path and body come from the function's spec.
  const shell = (s: string) => `'${s.replaceAll("'", "'\\''")}'`;
  const quoted = shell(JSON.stringify(o.body));
  const b = (o.body ?? {}) as Record<string, unknown>;
  const curl: (string | typeof KEY)[] = [
    `curl -sN ${
      shell(`${o.origin}/funccall/${o.id}/${o.path}`)
    } \\\n  -H 'content-type: application/json' \\\n`,
  ];
  // Double-quoted, so that the placeholder a reader copies by hand is the shell's variable.
  if (o.authEnabled) curl.push('  -H "authorization: Bearer ', KEY, '" \\\n');
  curl.push(`  -d ${quoted}`);
  const maxTokens = Number.isInteger(b.max_tokens) ? b.max_tokens : 16;
  // A chat sample (its path, or `messages` in its body) is shown as a chat; JSON's strings are
  // Python's too.
  const messages = Array.isArray(b.messages) ? b.messages as { content?: unknown }[] : undefined;
  const chat = /(^|\/)chat\/completions$/.test(o.path) || messages !== undefined;
  const said = messages?.findLast((m) => typeof m?.content === "string")?.content;
  const call = chat
    ? `r = client.chat.completions.create(\n    model="${o.id}",\n    messages=[{"role": "user", "content": ${
      JSON.stringify(typeof said === "string" ? said : "Hello")
    }}],\n    max_tokens=${maxTokens},\n)\nprint(r.choices[0].message.content)`
    : `r = client.completions.create(\n    model="${o.id}",\n    prompt=${
      JSON.stringify(typeof b.prompt === "string" ? b.prompt : "Hello")
    },\n    max_tokens=${maxTokens},\n)\nprint(r.choices[0].text)`;
  const openai: (string | typeof KEY)[] = [
    `from openai import OpenAI\n\nclient = OpenAI(base_url="${o.origin}/v1", api_key=`,
    ...(o.authEnabled ? ['"', KEY, '"'] as const : ['"none"'] as const),
    `)\n${call}`,
  ];
  return { curl, openai };
}

/**
 * An example, its key marks shown masked (`app.js`); `quote` is how **Copy**
 * escapes the key it puts there: in a shell's double quotes or a Python
 * string's.
 */
function ExampleText(props: { parts: (string | typeof KEY)[]; quote: "sh" | "py" }) {
  return (
    <pre class="code example">
      {props.parts.map((p) =>
        p === KEY ? <span class="apikey" data-key={props.quote}>$INFERX_APIKEY</span> : p
      )}
    </pre>
  );
}

function Examples(
  props: { id: string; origin: string; path: string; body: unknown; authEnabled: boolean },
) {
  const ex = callExamples(props);
  return (
    <section class="card examples">
      <h2>Call it</h2>
      <p class="muted">
        {props.authEnabled
          ? "Your key is masked here; Copy puts the command with your key in the clipboard."
          : "Auth is off on this gateway: no key needed."}
      </p>
      <h3>
        curl <button type="button" class="link" data-action="copy">Copy</button>
      </h3>
      <ExampleText parts={ex.curl} quote="sh" />
      <h3>
        OpenAI client (Python) <button type="button" class="link" data-action="copy">Copy</button>
      </h3>
      <ExampleText parts={ex.openai} quote="py" />
    </section>
  );
}

/** Request rows from the audit. */
export function CallsTable(props: { rows: RequestRow[]; showFunc: boolean }) {
  if (!props.rows.length) return <Empty>No calls recorded.</Empty>;
  return (
    <table class="grid calls">
      <thead>
        <tr>
          <th>Time</th>
          {props.showFunc && <th>Function</th>}
          <th>Method</th>
          <th>Path</th>
          <th>Status</th>
          <th>Latency</th>
          <th>First byte</th>
          <th>Start</th>
          <th>Pod</th>
          <th>Caller</th>
          <th>Error</th>
        </tr>
      </thead>
      <tbody>
        {props.rows.map((r) => (
          <tr class={r.status >= 400 ? "bad" : undefined}>
            <td class="small">{new Date(r.time).toISOString().replace("T", " ").slice(0, 23)}</td>
            {props.showFunc && <td class="mono">{`${r.tenant}/${r.namespace}/${r.func}`}</td>}
            <td>{r.method}</td>
            <td class="mono">{r.path}</td>
            <td>{r.status}</td>
            <td>{ms(r.latencyMs)}</td>
            <td>{ms(r.ttfbMs)}</td>
            <td>{startOf(r)}</td>
            <td class="mono">{r.pod ?? "–"}</td>
            <td class="mono">{r.principal}</td>
            <td>{r.error ?? ""}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/** How a call's worker served it; "–" when none did (refused, failed to start, gone before). */
function startOf(r: RequestRow): string {
  if (r.coldStart) return "cold start";
  if (r.resumed) return "resumed";
  return r.pod === undefined ? "–" : "warm";
}
