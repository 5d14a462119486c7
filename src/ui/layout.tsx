/**
 * The dashboard's page shell and the small pieces every page shares. A page
 * is a shell that holds no data: its browser module (`static/app.js`) fetches
 * the page's part (`/ui/part/...`) with the tab's credential, so every part
 * is rendered for the caller and authorized like the JSON API. Everything is
 * rendered with Hono's JSX, which escapes every value it prints.
 *
 * @module
 */
import type { Child } from "hono/jsx";
import { raw } from "hono/html";

/** The dashboard's pages, in the order of the navigation bar. */
export const PAGES = [
  { id: "functions", title: "Functions" },
  { id: "pods", title: "Pods" },
  { id: "nodes", title: "Nodes" },
  { id: "keys", title: "API keys" },
  { id: "audit", title: "Audit" },
] as const;

/** One of {@linkcode PAGES}. */
export type PageId = typeof PAGES[number]["id"];

/** What {@linkcode Shell} needs. */
export interface ShellProps {
  /** The page's title, after "InferX ·". */
  title: string;
  /** The navigation entry to highlight. */
  page: PageId;
  /** The part the browser loads into `<main>`, with its query. */
  part: string;
}

/** A whole page: header, navigation, sign-in form, and `<main>` that the part fills. */
export function Shell(props: ShellProps) {
  return (
    <>
      {raw("<!doctype html>")}
      <html lang="en">
        <head>
          <meta charset="utf-8" />
          <meta name="viewport" content="width=device-width, initial-scale=1" />
          <title>InferX · {props.title}</title>
          <link rel="icon" href="data:," />
          <link rel="stylesheet" href="/ui/static/style.css" />
          <script type="module" src="/ui/static/app.js"></script>
        </head>
        <body>
          <header class="top">
            <a class="brand" href="/ui">InferX</a>
            <nav>
              {PAGES.map((p) => (
                <a
                  href={`/ui/${p.id}`}
                  data-nav={p.id}
                  aria-current={p.id === props.page ? "page" : undefined}
                >
                  {p.title}
                </a>
              ))}
            </nav>
            <span class="live" id="live" title="Live updates from the gateway">○ offline</span>
            <span id="who" class="who"></span>
            <button type="button" id="signout" class="link" hidden>Sign out</button>
          </header>
          <div id="flash" class="flash" role="alert" hidden></div>
          <section id="login" class="login" hidden>
            <h2>Sign in</h2>
            <p id="login-reason" class="error"></p>
            <form id="login-form">
              <label>
                API key or bearer token
                <input
                  type="password"
                  name="credential"
                  autocomplete="off"
                  spellcheck={false}
                  required
                />
              </label>
              <button type="submit">Sign in</button>
            </form>
            <p class="hint">
              Kept in this tab only (session storage) and sent to this gateway's API.
            </p>
          </section>
          <main id="main" data-part={props.part}>
            <p class="muted">Loading…</p>
          </main>
        </body>
      </html>
    </>
  );
}

/** A `<section>` whose content the browser reloads from `src` when the cluster changes. */
export function Live(props: { src: string; children?: Child }) {
  return <div class="live-region" data-live={props.src}>{props.children}</div>;
}

/** A colored chip naming a function, linking to its page. */
export function FuncChip(props: { id: string; color: string; link?: boolean }) {
  const body = (
    <>
      <span class="swatch" style={`background:${props.color}`}></span>
      {props.id}
    </>
  );
  return props.link === false
    ? <span class="chip">{body}</span>
    : <a class="chip" href={`/ui/functions/${props.id}`}>{body}</a>;
}

/** A pod state as a colored badge. */
export function StateBadge(props: { state: string; tier?: string }) {
  return (
    <span class={`state state-${props.state.toLowerCase()}`}>
      {props.state}
      {props.tier ? ` · ${props.tier}` : ""}
    </span>
  );
}

/** A message in place of a table that has no rows. */
export function Empty(props: { children?: Child }) {
  return <p class="muted empty">{props.children}</p>;
}

/** A duration in ms, with two decimals below 10 ms. */
export function ms(n: number | undefined): string {
  if (n === undefined) return "–";
  return n < 10 ? `${n.toFixed(2)} ms` : `${Math.round(n)} ms`;
}
