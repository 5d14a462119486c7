// The dashboard's buttons and forms: terminate a pod, read its log, create
// and revoke API keys, copy an example, render snapshots. Each is a call of
// the JSON API with the tab's credential; a refusal shows the API's message.
import { api, apiJson, clearFlash, credential, flash, keyForExample, messageOf } from "./api.js";

/**
 * A button that needs a second click within 4 s. The second click disarms it
 * at once: live regions are not redrawn under an armed button, and the one
 * clicked is about to change.
 */
function armed(button, label) {
  const disarm = () => {
    delete button.dataset.armed;
    button.textContent = button.dataset.label;
  };
  if (button.dataset.armed) {
    clearTimeout(Number(button.dataset.armed));
    disarm(); // its own label again, whatever comes of the action (a refusal leaves it usable)
    return true;
  }
  button.dataset.label ??= button.textContent;
  button.textContent = label;
  button.dataset.armed = String(setTimeout(disarm, 4000));
  return false;
}

const logPanel = () => document.getElementById("log-panel");

async function showLog(func, pod) {
  const panel = logPanel();
  if (!panel) return;
  panel.hidden = false;
  panel.dataset.func = func;
  panel.dataset.pod = pod;
  panel.querySelector(".log-pod").textContent = pod;
  const pre = panel.querySelector("pre");
  pre.textContent = "Loading…";
  const res = await api(`/pods/${func}/${encodeURIComponent(pod)}/log?lines=100`);
  const text = res.ok ? await res.text() : await messageOf(res);
  pre.classList.toggle("error", !res.ok);
  pre.textContent = text || "(no output yet)";
  pre.scrollTop = pre.scrollHeight;
}

async function copyExample(button) {
  let pre = button.parentElement.nextElementSibling;
  while (pre && !pre.matches("pre")) pre = pre.nextElementSibling;
  if (!pre) return;
  const clone = pre.cloneNode(true);
  const key = credential();
  for (const k of clone.querySelectorAll("[data-key]")) {
    k.textContent = keyForExample(key, k.dataset.key);
  }
  const text = clone.textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  flash("Copied", "info");
}

async function reloadKeys(loadInto) {
  for (const el of document.querySelectorAll("[data-reload]")) {
    await loadInto(el, el.dataset.reload);
  }
}

async function createKey(form, loadInto) {
  const f = new FormData(form);
  const body = { name: f.get("name").trim(), scope: f.get("scope") };
  for (const field of ["tenant", "namespace"]) {
    const v = f.get(field).trim();
    if (v) body[field] = v;
  }
  const days = f.get("expires_days");
  if (days) body.expires_in_s = Math.round(Number(days) * 86400);
  // The last key's secret goes whatever comes of this one: shown beside a refusal, it reads as
  // this key's.
  const box = document.getElementById("new-key");
  box.hidden = true;
  box.querySelector(".new-key-secret").textContent = "";
  try {
    const k = await apiJson("/apikeys", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    clearFlash(); // a refusal of an earlier try would read as this key's
    box.hidden = false;
    box.querySelector(".new-key-id").textContent = k.id;
    box.querySelector(".new-key-secret").textContent = k.key;
    form.reset();
    await reloadKeys(loadInto);
  } catch (err) {
    flash(err.message);
  }
}

/** Snapshots of the function, when this gateway lists them (`GET /snapshots`). */
async function showSnapshots() {
  const section = document.getElementById("snapshots");
  if (!section) return;
  const [tenant, namespace, name] = section.dataset.func.split("/");
  let body;
  try {
    body = await apiJson("/snapshots");
  } catch {
    return; // no such route here, or not allowed: nothing to show
  }
  const all = Array.isArray(body) ? body : Array.isArray(body?.items) ? body.items : [];
  const mine = all.filter((s) =>
    s && s.tenant === tenant && s.namespace === namespace &&
    (s.func ?? s.function ?? s.name) === name
  );
  const out = section.querySelector(".snapshots-body");
  section.hidden = false;
  if (!mine.length) {
    out.textContent = "No snapshots of this function.";
    return;
  }
  // The fields a reader wants, formatted; the rest (the template's hash, the function's name
  // and tenant, which the page is about) left out.
  const when = (ms) =>
    typeof ms === "number" ? new Date(ms).toISOString().replace(/\.\d+Z$/, "Z") : "";
  const cols = [
    ["Version", (s) => `v${s.funcVersion}`],
    ["Node", (s) => s.node],
    ["State", (s) => s.error ? `${s.state}: ${s.error}` : s.state],
    ["Size", (s) => typeof s.bytes === "number" ? `${(s.bytes / 1048576).toFixed(1)} MB` : ""],
    ["Dump", (s) => typeof s.dumpMs === "number" ? `${Math.round(s.dumpMs)} ms` : ""],
    ["Restores", (s) => String(s.restores ?? 0)],
    ["Taken", (s) => when(s.createdAt)],
    ["Last restored", (s) => when(s.lastUsedAt)],
    ["From pod", (s) => s.sourcePod ?? ""],
  ];
  const table = document.createElement("table");
  table.className = "grid";
  const head = table.createTHead().insertRow();
  for (const [title] of cols) {
    head.append(Object.assign(document.createElement("th"), { textContent: title }));
  }
  const tbody = table.createTBody();
  for (const s of mine) {
    const row = tbody.insertRow();
    for (const [, cell] of cols) row.insertCell().textContent = cell(s) ?? "";
  }
  out.replaceChildren(table);
}

/** Wires every action on the page (delegated: parts come and go). */
export function wireActions({ refreshLive, loadInto }) {
  document.addEventListener("inferx:loaded", showSnapshots);
  document.addEventListener("click", async (ev) => {
    const button = ev.target.closest("[data-action]");
    if (!button) return;
    const { action, func, pod, keyId } = button.dataset;
    if (action === "terminate") {
      if (!armed(button, "Confirm terminate")) return;
      button.disabled = true;
      try {
        await apiJson(`/pods/${func}/${encodeURIComponent(pod)}`, { method: "DELETE" });
        flash(`Terminating pod ${pod}`, "info");
        refreshLive();
      } catch (err) {
        flash(err.message);
        button.disabled = false;
      }
    } else if (action === "log") {
      await showLog(func, pod);
    } else if (action === "log-refresh") {
      const p = logPanel();
      await showLog(p.dataset.func, p.dataset.pod);
    } else if (action === "log-close") {
      logPanel().hidden = true;
    } else if (action === "revoke") {
      if (!armed(button, "Confirm revoke")) return;
      try {
        await apiJson(`/apikeys/${encodeURIComponent(keyId)}`, { method: "DELETE" });
        flash(`Revoked key ${keyId}`, "info");
        await reloadKeys(loadInto);
      } catch (err) {
        flash(err.message);
      }
    } else if (action === "copy") {
      await copyExample(button);
    }
  });
  document.addEventListener("submit", (ev) => {
    if (ev.target.id === "key-form") {
      ev.preventDefault();
      createKey(ev.target, loadInto);
    }
  });
}
