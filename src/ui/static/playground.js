// The playground on a function's page: sends a prompt (or a raw JSON body to
// any path) through /funccall with the tab's credential, streams the answer
// as it comes, can cancel it, and shows what the gateway says about the
// call: cold start, resumed or warm, queue time, first byte, first token,
// total time, and the pod that answered.
import { api, callUrl, messageOf } from "./api.js";
import { parseEvents } from "./live.js";

const fmt = (ms) =>
  ms === undefined || Number.isNaN(ms) ? "–" : `${ms.toFixed(ms < 10 ? 2 : 0)} ms`;

/** The request a form asks for: `{ path, body, prompt }`, or throws with a reason. */
function requestOf(form) {
  const f = new FormData(form);
  const path = String(f.get("path")).replace(/^\/+/, "");
  let body;
  try {
    body = JSON.parse(String(f.get("body")) || "{}");
  } catch (err) {
    throw new Error(`The body is not valid JSON: ${err.message}`);
  }
  if (f.get("mode") !== "prompt") return { path, body: JSON.stringify(body), prompt: false };
  if (!body || typeof body !== "object" || Array.isArray(body)) body = {};
  const prompt = String(f.get("prompt"));
  if (Array.isArray(body.messages)) body.messages = [{ role: "user", content: prompt }];
  else body.prompt = prompt;
  const max = Number(f.get("max_tokens"));
  if (Number.isInteger(max) && max > 0) body.max_tokens = max;
  body.stream = true;
  return { path, body: JSON.stringify(body), prompt: true };
}

/** The text a streamed (or whole) OpenAI-style answer carries. */
function tokenText(json) {
  const c = json?.choices?.[0];
  return c?.text ?? c?.delta?.content ?? c?.message?.content ?? "";
}

async function send(section, form) {
  const out = section.querySelector(".pg-output");
  const stat = (name, text) => section.querySelector(`[data-stat="${name}"]`).textContent = text;
  const sendButton = form.querySelector('[name="send"]');
  const cancel = form.querySelector('[name="cancel"]');
  let req;
  try {
    req = requestOf(form);
  } catch (err) {
    out.textContent = err.message;
    out.classList.add("error");
    return;
  }
  for (const s of ["start", "status", "queue", "ttfb", "ttft", "total", "pod"]) stat(s, "–");
  out.textContent = "";
  out.classList.remove("error");
  section.dataset.state = "running";
  const abort = new AbortController();
  cancel.disabled = false;
  sendButton.disabled = true;
  const onCancel = () => abort.abort();
  cancel.addEventListener("click", onCancel, { once: true });
  const t0 = performance.now();
  let firstToken;
  try {
    const url = callUrl(section.dataset.func, req.path, location.origin);
    if (!url) throw new Error(`Not a path of this function: ${req.path}`);
    const res = await api(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: req.body,
      signal: abort.signal,
    });
    const ttfb = performance.now() - t0;
    const h = (k) => res.headers.get(k);
    stat("status", `${res.status} ${res.statusText}`);
    if (h("x-inferx-pod")) {
      stat(
        "start",
        h("x-inferx-cold-start") === "1"
          ? "cold start"
          : h("x-inferx-resumed") === "1"
          ? "resumed"
          : "warm",
      );
      stat("queue", fmt(Number(h("x-inferx-queue-ms"))));
      stat("pod", h("x-inferx-pod"));
      stat("ttfb", `${fmt(ttfb)} (gateway ${fmt(Number(h("x-inferx-ttfb-ms")))})`);
    } else {
      stat("ttfb", fmt(ttfb));
    }
    if (!res.ok) {
      out.textContent = await messageOf(res);
      out.classList.add("error");
    } else {
      const sse = (h("content-type") ?? "").includes("text/event-stream");
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let whole = "";
      const token = (text) => {
        if (!text) return;
        if (firstToken === undefined) {
          firstToken = performance.now() - t0;
          stat("ttft", fmt(firstToken));
        }
        out.textContent += text;
      };
      while (true) {
        const { value, done } = await reader.read();
        if (done) break;
        if (!req.prompt) {
          token(value);
        } else if (sse) {
          const parsed = parseEvents(buffer + value.replaceAll("\r\n", "\n"));
          buffer = parsed.rest;
          for (const ev of parsed.events) {
            if (ev.data === "[DONE]") continue;
            try {
              token(tokenText(JSON.parse(ev.data)));
            } catch {
              token(ev.data);
            }
          }
        } else {
          whole += value;
        }
      }
      if (whole) {
        try {
          token(tokenText(JSON.parse(whole)) || whole);
        } catch {
          token(whole);
        }
      }
    }
    stat("total", fmt(performance.now() - t0));
    section.dataset.state = "done";
  } catch (err) {
    const t = performance.now() - t0;
    if (abort.signal.aborted) {
      stat("total", `cancelled after ${fmt(t)}`);
      out.textContent += out.textContent ? "\n[cancelled]" : "[cancelled]";
      section.dataset.state = "cancelled";
    } else {
      out.textContent += `\n${err.message}`;
      out.classList.add("error");
      section.dataset.state = "failed";
    }
  } finally {
    cancel.removeEventListener("click", onCancel);
    cancel.disabled = true;
    sendButton.disabled = false;
    // The call is in the function's recent calls once the audit has written it (it writes every
    // 200 ms): drawn then, as no pod's change may come to draw it.
    setTimeout(() => afterCall?.(), 400);
  }
}

/** Redraws the page's live parts (set by {@linkcode wirePlayground}). */
let afterCall;

/** Wires the playground whenever a function's page is shown. */
export function wirePlayground({ refreshLive } = {}) {
  afterCall = refreshLive;
  document.addEventListener("submit", (ev) => {
    const form = ev.target;
    if (!form.matches?.(".pg-form")) return;
    ev.preventDefault();
    send(form.closest(".playground"), form);
  });
  document.addEventListener("change", (ev) => {
    if (ev.target.name !== "mode") return;
    setMode(ev.target.closest(".playground"), ev.target.value);
  });
  document.addEventListener("inferx:loaded", () => {
    const pg = document.querySelector(".playground");
    const checked = pg?.querySelector('[name="mode"]:checked');
    if (checked) setMode(pg, checked.value);
  });
}

/**
 * Shows the fields of `mode`. The prompt's own field goes out of the form in
 * raw mode: hidden, a value out of its range would stop the form unsaid (the
 * browser cannot point at a field it does not show).
 */
function setMode(pg, mode) {
  pg.dataset.mode = mode;
  const max = pg.querySelector('[name="max_tokens"]');
  if (max) max.disabled = mode !== "prompt";
}
