/**
 * Time as a dependency: shells read the clock and schedule their ticks
 * through these, so that tests (and the simulator) can run them on a time of
 * their own, as Knative's multiscaler takes its ticker from outside.
 *
 * @module
 */

/** Reads the time. */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
}

/** Schedules calls; each returns the function that cancels it. */
export interface Ticker {
  /** Calls `fn` every `ms`. */
  every(ms: number, fn: () => void): () => void;
  /** Calls `fn` once, after `ms`. */
  after(ms: number, fn: () => void): () => void;
}

/** The system clock. */
export const systemClock: Clock = { now: () => Date.now() };

/**
 * The epoch time of the process's start plus the monotonic time since: what
 * measures spans of time in one process (a silence, a deadline), which a
 * step of the system clock (NTP setting it, a VM resumed) must not stretch or
 * cut short. It drifts from the system clock by the steps taken since the
 * start, so times written for others to read take {@linkcode systemClock}.
 */
export const steadyClock: Clock = { now: () => performance.timeOrigin + performance.now() };

/** Timers of the runtime. */
export const systemTicker: Ticker = {
  every(ms, fn) {
    const id = setInterval(fn, ms);
    return () => clearInterval(id);
  },
  after(ms, fn) {
    const id = setTimeout(fn, ms);
    return () => clearTimeout(id);
  },
};

/**
 * Resolves after the event loop's next turn (timers, I/O): a long piece of
 * synchronous work awaits it between slices, so that others go on meanwhile.
 */
export function nextTurn(): Promise<void> {
  return new Promise((r) => setTimeout(r, 0));
}
