/**
 * Logging through LogTape. {@linkcode setupLogging} is called once by
 * `main.ts`; libraries only call {@linkcode logger}.
 *
 * @module
 */
import {
  configure,
  getConsoleSink,
  getLogger,
  getTextFormatter,
  type Logger,
  type LogLevel,
} from "@logtape/logtape";

/** A logger under the `inferx` category, e.g. `logger("gateway")`. */
export function logger(...category: string[]): Logger {
  return getLogger(["inferx", ...category]);
}

/** The levels `LOG_LEVEL` takes, lowest first. */
export const LOG_LEVELS: readonly LogLevel[] = [
  "trace",
  "debug",
  "info",
  "warning",
  "error",
  "fatal",
];

/** Configures the console sink at `level` (env `LOG_LEVEL`, default `info`). */
export async function setupLogging(level: string = "info"): Promise<void> {
  const lowest = (LOG_LEVELS as readonly string[]).includes(level) ? level as LogLevel : "info";
  await configure({
    reset: true,
    sinks: { console: getConsoleSink({ formatter: getTextFormatter({ value: "bare" }) }) },
    loggers: [
      { category: ["inferx"], lowestLevel: lowest, sinks: ["console"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["console"] },
    ],
  });
}
