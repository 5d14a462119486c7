/**
 * The dashboard's browser modules and style sheet, served by the gateway
 * from `src/ui/static/` (no CDN, no build step): read once, then answered
 * from memory with an ETag.
 *
 * @module
 */
import { createHash } from "node:crypto";

const TYPES: Record<string, string> = {
  js: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
};

/** A static file, ready to answer. */
export interface Asset {
  body: Uint8Array<ArrayBuffer>;
  type: string;
  etag: string;
}

const DIR = new URL("./static/", import.meta.url);
const NAME_RE = /^[a-z][a-z0-9_]*\.(js|css)$/;
const cache = new Map<string, Promise<Asset | undefined>>();

/** The asset `name` (`app.js`, `style.css`), or undefined when there is none. */
export function asset(name: string): Promise<Asset | undefined> {
  const m = NAME_RE.exec(name);
  if (!m) return Promise.resolve(undefined);
  let found = cache.get(name);
  if (!found) {
    found = Deno.readFile(new URL(name, DIR)).then(
      (body) => ({
        body,
        type: TYPES[m[1]],
        etag: `"${createHash("sha256").update(body).digest("base64url").slice(0, 22)}"`,
      }),
      (err) => {
        cache.delete(name);
        if (err instanceof Deno.errors.NotFound) return undefined;
        throw err;
      },
    );
    cache.set(name, found);
  }
  return found;
}
