// Live updates: reads the gateway's server-sent events (`/ui/events`) with
// the tab's credential (EventSource cannot send one) and calls back on every
// pod, node or function change; reconnects after a break and catches up.
//
// A browser opens six connections to a host at most, so six tabs each
// holding a stream would stall every other request of the dashboard. The
// visible tabs of one credential therefore share one stream: whichever holds
// a Web Lock named after the credential reads it and tells the others of
// each change on a BroadcastChannel of the same name (a change only: each
// tab loads what it shows with its own credential); when that tab closes or
// is hidden, the next visible one takes the lock and the stream. A hidden
// tab takes no part and catches up when shown. Where the browser offers no
// Web Locks (a page served over plain HTTP from another host is not a secure
// context), each visible tab holds a stream of its own, as before.
import { api, credential, messageOf } from "./api.js";

const indicator = () => document.getElementById("live");

function show(text, state) {
  const el = indicator();
  el.textContent = text;
  el.dataset.state = state;
}

/** The events in `buffer` so far, and what is left of it. */
export function parseEvents(buffer) {
  const events = [];
  let at;
  while ((at = buffer.indexOf("\n\n")) >= 0) {
    const block = buffer.slice(0, at);
    buffer = buffer.slice(at + 2);
    let event = "message";
    let data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data += line.slice(5).trim();
    }
    if (data) events.push({ event, data });
  }
  return { events, rest: buffer };
}

/** Resolves when the tab is shown. */
function shown() {
  return new Promise((resolve) => {
    const check = () => {
      if (document.hidden) return;
      document.removeEventListener("visibilitychange", check);
      resolve();
    };
    document.addEventListener("visibilitychange", check);
    check();
  });
}

/**
 * A name for the tab's credential, the same in every tab that has it and
 * not the credential: its SHA-256 digest's first 96 bits. (SubtleCrypto, as
 * Web Locks, exists only in a secure context.)
 */
async function scopeOf(value) {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(value)));
  return [...d.subarray(0, 12)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Waits `ms`, or less when `signal` aborts. */
function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => (clearTimeout(timer), resolve()), { once: true });
  });
}

/**
 * Reads the stream until `signal` aborts (the tab hidden), reconnecting after
 * a break. `on.connected()` after each connection, `on.change()` after each
 * change, `on.state(text, state)` for the indicator. Returns why it ended for
 * good (refused, signed out), or undefined when `signal` ended it.
 */
async function stream(on, signal) {
  let delay = 1000;
  while (!signal.aborted) {
    let res;
    try {
      res = await api("/ui/events", { signal });
    } catch {
      res = undefined;
    }
    if (res && (res.status === 401 || res.status === 403)) {
      return `○ not live: ${await messageOf(res)}`;
    }
    if (res?.ok && res.body) {
      on.state("● live", "on");
      on.connected();
      delay = 1000;
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      try {
        while (true) {
          const { value, done } = await reader.read();
          if (done) break;
          const parsed = parseEvents(buffer + value);
          buffer = parsed.rest;
          for (const ev of parsed.events) {
            if (ev.event === "bye") return "○ not live: signed out";
            if (ev.event === "pod" || ev.event === "node" || ev.event === "function") on.change();
          }
        }
      } catch {
        // the stream broke off (or the tab was hidden): reconnect
      }
    }
    if (signal.aborted) return undefined;
    on.state("○ reconnecting", "off");
    await sleep(delay, signal);
    delay = Math.min(delay * 2, 15_000);
  }
  return undefined;
}

/** Follows the cluster: `onChange()` after each change, and after each reconnection. */
export async function follow(onChange) {
  const locks = navigator.locks;
  const name = locks ? `inferx.live.${await scopeOf(credential())}` : "";
  const channel = locks ? new BroadcastChannel(name) : undefined;
  /** This tab reads the stream (holds the lock). */
  let leading = false;
  /** The indicator as this tab, when leading, last set it: told to tabs that ask. */
  let mine = { text: "○ offline", state: "off" };
  /** Why following ended for good, once it has. */
  let ended;
  /** Ends this tab's turn: hidden, or ended by the tab that leads. */
  let turn;
  /** This tab has just loaded what it shows: its first connection is no catching up. */
  let first = true;
  if (channel) {
    channel.onmessage = ({ data }) => {
      if (leading) {
        if (data.type === "ask") channel.postMessage({ type: "state", ...mine });
        return;
      }
      if (document.hidden) return; // caught up when shown
      if (data.type === "state") show(data.text, data.state);
      else if (data.type === "change") onChange();
      else if (data.type === "end") {
        ended = data.text;
        show(data.text, "off");
        turn?.abort();
      }
    };
  }
  const on = {
    state(text, state) {
      mine = { text, state };
      show(text, state);
      channel?.postMessage({ type: "state", text, state });
    },
    change() {
      onChange();
      channel?.postMessage({ type: "change" });
    },
    connected() {
      // Changes may have been missed meanwhile: by this tab (unless it has just loaded), and by
      // the others while the stream passed from tab to tab.
      if (!first) onChange();
      first = false;
      channel?.postMessage({ type: "change" });
    },
  };
  while (ended === undefined) {
    if (document.hidden) {
      show("○ paused while hidden", "off");
      await shown();
      first = false; // caught up below
      onChange();
    }
    turn = new AbortController();
    const signal = turn.signal;
    const onHide = () => document.hidden && turn.abort();
    document.addEventListener("visibilitychange", onHide);
    const lead = async () => {
      leading = true;
      try {
        ended = await stream(on, signal);
        if (ended !== undefined) {
          show(ended, "off");
          channel?.postMessage({ type: "end", text: ended });
        }
      } finally {
        leading = false;
      }
    };
    try {
      if (locks) {
        channel.postMessage({ type: "ask" }); // the indicator of the tab that leads
        let led = false;
        await locks.request(name, { ifAvailable: true }, (lock) => lock && (led = true, lead()));
        if (!led) {
          // Another window leads: whatever it heard before its stream ended and this one's
          // begins, this window too has to catch up when it takes over.
          first = false;
          await locks.request(name, { signal }, lead);
        }
      } else await lead();
    } catch {
      // hidden, or ended by the tab that leads, while waiting for the lock
    }
    document.removeEventListener("visibilitychange", onHide);
  }
  channel?.close();
}
