// Live updates: reads the gateway's server-sent events (`/ui/events`) with
// the tab's credential (EventSource cannot send one) and calls back on every
// pod or node change; reconnects after a break and catches up. A hidden tab
// lets its stream go (a browser opens 6 connections to a host at most: six
// tabs each holding a stream would stall every other request of the
// dashboard) and follows again, caught up, when shown.
import { api, messageOf } from "./api.js";

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

/** Follows the cluster: `onChange()` after each change, and after each reconnection. */
export async function follow(onChange) {
  let delay = 1000;
  let first = true;
  while (true) {
    if (document.hidden) {
      show("○ paused while hidden", "off");
      await shown();
    }
    const stop = new AbortController();
    const onHide = () => document.hidden && stop.abort();
    document.addEventListener("visibilitychange", onHide);
    let res;
    try {
      res = await api("/ui/events", { signal: stop.signal });
    } catch {
      res = undefined;
    }
    if (res && (res.status === 401 || res.status === 403)) {
      document.removeEventListener("visibilitychange", onHide);
      show(`○ not live: ${await messageOf(res)}`, "off");
      return;
    }
    if (res?.ok && res.body) {
      show("● live", "on");
      if (!first) onChange(); // changes may have been missed meanwhile
      first = false;
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
            if (ev.event === "bye") {
              document.removeEventListener("visibilitychange", onHide);
              show("○ not live: signed out", "off");
              return;
            }
            if (ev.event === "pod" || ev.event === "node") onChange(ev);
          }
        }
      } catch {
        // the stream broke off (or the tab was hidden): reconnect
      }
    }
    document.removeEventListener("visibilitychange", onHide);
    if (stop.signal.aborted) {
      first = false; // caught up once shown again
      continue;
    }
    show("○ reconnecting", "off");
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 15_000);
  }
}
