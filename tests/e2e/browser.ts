/**
 * A headless Chromium for end-to-end tests of the dashboard: Debian's
 * `chromium` driven by `puppeteer-core`, a fresh profile per launch, and a
 * check that a screenshot shows something (its pixels vary), not a blank
 * page.
 *
 * @module
 */
import { decode } from "fast-png";
import puppeteer, { type Browser } from "puppeteer-core";

/** Where Debian's package puts Chromium. */
export const CHROMIUM = "/usr/bin/chromium";

/** Why Chromium cannot run here, or undefined when it can. */
export function chromiumUnavailable(): string | undefined {
  try {
    const out = new Deno.Command(CHROMIUM, {
      args: ["--version"],
      stdout: "piped",
      stderr: "piped",
    })
      .outputSync();
    if (!out.success) {
      return `${CHROMIUM} --version failed: ${new TextDecoder().decode(out.stderr).trim()}`;
    }
    return undefined;
  } catch (err) {
    return `${CHROMIUM} is not installed (Debian package chromium; tests/run.sh installs it as root): ${
      (err as Error).message
    }`;
  }
}

/** A browser with its own profile directory, removed on close. */
export interface TestBrowser {
  browser: Browser;
  close(): Promise<void>;
}

/** Starts headless Chromium with a fresh profile, nothing fetched from outside. */
export async function launchChromium(): Promise<TestBrowser> {
  const profile = await Deno.makeTempDir({ prefix: "inferx-chromium-" });
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-dev-shm-usage",
      `--user-data-dir=${profile}`,
    ],
  });
  return {
    browser,
    async close() {
      await browser.close().catch(() => {});
      await Deno.remove(profile, { recursive: true }).catch(() => {});
    },
  };
}

/** How much a picture varies: the standard deviation of its luminance, and its distinct colors. */
export function pixelStats(png: Uint8Array): { stddev: number; colors: number } {
  const img = decode(png);
  const ch = img.channels;
  const data = img.data;
  let sum = 0;
  let sumSq = 0;
  const colors = new Set<number>();
  const n = img.width * img.height;
  for (let i = 0; i < n; i++) {
    const r = data[i * ch], g = data[i * ch + 1], b = data[i * ch + 2];
    const y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    sum += y;
    sumSq += y * y;
    if (colors.size < 100_000) colors.add((r << 16) | (g << 8) | b);
  }
  const mean = sum / n;
  return { stddev: Math.sqrt(Math.max(0, sumSq / n - mean * mean)), colors: colors.size };
}
