// The dashboard's page script: asks for a credential when the API wants one,
// loads the page's part rendered for that credential, keeps live regions
// current from the gateway's event stream, and wires the page's actions.
import {
  api,
  apiJson,
  credential,
  credentialProblem,
  flash,
  masked,
  messageOf,
  partUrl,
  setCredential,
} from "./api.js";
import { follow } from "./live.js";
import { wireActions } from "./actions.js";
import { wirePlayground } from "./playground.js";

const main = document.getElementById("main");

/** Shows the sign-in form with the API's reason. */
function showLogin(reason) {
  document.getElementById("login").hidden = false;
  document.getElementById("login-reason").textContent = reason;
  main.hidden = true;
  document.querySelector("#login input")?.focus();
}

/** Loads `url` into `el`; false (and says why) when the API refuses. */
export async function loadInto(el, url, { quiet = false } = {}) {
  const part = partUrl(url, location.origin);
  if (!part) {
    if (!quiet) flash(`Not a part of this dashboard: ${url}`);
    return false;
  }
  let res;
  try {
    res = await api(part);
  } catch (err) {
    if (!quiet) flash(`Cannot reach the gateway: ${err.message}`);
    return false;
  }
  if (res.status === 401) {
    showLogin(await messageOf(res));
    return false;
  }
  if (!res.ok && (res.headers.get("content-type") ?? "").startsWith("text/html")) {
    // A part that says itself what was wrong (the audit's filter): shown as it comes.
    el.innerHTML = await res.text();
    return false;
  }
  if (!res.ok) {
    const message = await messageOf(res);
    // A live region's redraw says nothing of a passing failure, but shows what is gone (the
    // function of the page deleted meanwhile).
    if (quiet && res.status !== 404) return false;
    const p = document.createElement("p");
    p.className = "error refused";
    p.textContent = message;
    el.replaceChildren(p);
    return false;
  }
  el.innerHTML = await res.text();
  fillKeys(el);
  return true;
}

/** Writes the masked credential wherever an example shows a key. */
function fillKeys(root) {
  for (const el of root.querySelectorAll("[data-key]")) el.textContent = masked(credential());
}

let refreshTimer;
let refreshing = false;

/**
 * Reloads every live region soon: 150 ms after the first change not yet
 * drawn, so a burst of changes costs one reload. Later changes do not push
 * that reload back (a steady stream of them would put it off for good); one
 * that comes while a reload runs gets another after it.
 */
export function refreshLive() {
  if (refreshTimer !== undefined) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = undefined;
    // A button armed for its second click (terminate) would be drawn anew, unarmed: later.
    if (refreshing || document.querySelector("[data-live] [data-armed]")) return refreshLive();
    refreshing = true;
    try {
      await Promise.all(
        [...document.querySelectorAll("[data-live]")].map((el) =>
          loadInto(el, el.dataset.live, { quiet: true })
        ),
      );
    } finally {
      refreshing = false;
    }
  }, 150);
}

async function showWho() {
  const who = document.getElementById("who");
  const signout = document.getElementById("signout");
  signout.hidden = !credential();
  let me;
  try {
    me = await apiJson("/ui/me");
  } catch {
    return;
  }
  who.textContent = me.auth_enabled ? me.id : "auth off · admin";
  for (const [page, ok] of [["nodes", me.may.read_cluster], ["keys", me.may.manage_keys]]) {
    const link = document.querySelector(`nav [data-nav="${page}"]`);
    if (link) link.hidden = !ok;
  }
}

function wireLogin() {
  document.getElementById("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const value = new FormData(ev.target).get("credential").trim();
    const problem = credentialProblem(value);
    if (problem) {
      document.getElementById("login-reason").textContent = problem;
      return;
    }
    setCredential(value);
    const res = await api("/ui/me").catch((err) => ({ ok: false, status: 0, err }));
    if (!res.ok) {
      setCredential("");
      const reason = res.err ? res.err.message : await messageOf(res);
      document.getElementById("login-reason").textContent = reason;
      return;
    }
    location.reload();
  });
  document.getElementById("signout").addEventListener("click", () => {
    setCredential("");
    location.reload();
  });
}

/**
 * The audit form's status field is for calls: turned off (so not sent, its
 * text kept) while pod changes are chosen, which have no status code.
 */
function wireAuditForm() {
  document.addEventListener("change", (ev) => {
    if (!ev.target.matches?.('#audit-form [name="kind"]')) return;
    const status = ev.target.form.elements.status;
    status.disabled = ev.target.value === "pods";
    status.title = status.disabled ? "pod changes have no status code" : "";
  });
}

async function start() {
  wireLogin();
  wireAuditForm();
  // Kept by a dashboard before it checked (a masked key pasted in): not sent, asked again.
  const kept = credential();
  if (kept && credentialProblem(kept)) setCredential("");
  wireActions({ refreshLive, loadInto });
  wirePlayground({ refreshLive });
  showWho();
  if (!(await loadInto(main, main.dataset.part))) return;
  document.dispatchEvent(new CustomEvent("inferx:loaded"));
  if (document.querySelector("[data-live]")) follow(refreshLive);
  else {
    // Nothing here follows the cluster: said so, rather than "offline" (read as the gateway's).
    const live = document.getElementById("live");
    live.textContent = "○ not live on this page";
    live.dataset.state = "none";
  }
}

start();
