/**
 * The CUDA driver through `Deno.dlopen("libcuda.so.1")`: device discovery
 * and the driver's process checkpoint API (lock, checkpoint GPU memory into
 * host memory, restore, unlock). A missing library or symbol is an absent
 * capability, never a crash; every failing call throws a
 * {@linkcode CudaError} carrying the `CUresult` name.
 *
 * @module
 */
import { InferxError } from "../common/errors.ts";

/** `CUresult` values the platform meets, by name. */
export const CU_RESULT_NAMES: Readonly<Record<number, string>> = {
  0: "CUDA_SUCCESS",
  1: "CUDA_ERROR_INVALID_VALUE",
  2: "CUDA_ERROR_OUT_OF_MEMORY",
  3: "CUDA_ERROR_NOT_INITIALIZED",
  4: "CUDA_ERROR_DEINITIALIZED",
  34: "CUDA_ERROR_STUB_LIBRARY",
  46: "CUDA_ERROR_DEVICE_UNAVAILABLE",
  100: "CUDA_ERROR_NO_DEVICE",
  101: "CUDA_ERROR_INVALID_DEVICE",
  304: "CUDA_ERROR_OPERATING_SYSTEM",
  401: "CUDA_ERROR_ILLEGAL_STATE",
  500: "CUDA_ERROR_NOT_FOUND",
  600: "CUDA_ERROR_NOT_READY",
  800: "CUDA_ERROR_NOT_PERMITTED",
  801: "CUDA_ERROR_NOT_SUPPORTED",
  909: "CUDA_ERROR_TIMEOUT",
  999: "CUDA_ERROR_UNKNOWN",
};

/** A CUDA driver call failed. */
export class CudaError extends InferxError {
  readonly result: number;
  readonly resultName: string;
  constructor(call: string, result: number) {
    const name = CU_RESULT_NAMES[result] ?? `CUresult ${result}`;
    super("internal", `${call} failed: ${name}`, {
      retryable: result === 600 || result === 909,
      details: { result, resultName: name },
    });
    this.name = "CudaError";
    this.result = result;
    this.resultName = name;
  }
}

/** A CUDA process's checkpoint state (`CUprocessState`). */
export type CudaProcessState =
  | "running"
  | "locked"
  | "checkpointed"
  | "failed"
  | "checkpointing"
  | "restoring"
  | `unknown(${number})`;

/** `CU_PROCESS_STATE_*` by value (4 and 5 come with newer drivers). */
const STATES: readonly CudaProcessState[] = [
  "running",
  "locked",
  "checkpointed",
  "failed",
  "checkpointing",
  "restoring",
];

/** One GPU as the driver reports it. */
export interface CudaDevice {
  ordinal: number;
  name: string;
  totalMemMB: number;
  /** `GPU-xxxxxxxx-xxxx-...` as nvidia-smi prints it (`MIG-...` for a MIG instance). */
  uuid: string;
}

const CORE = {
  cuInit: { parameters: ["u32"], result: "i32" },
  cuDriverGetVersion: { parameters: ["buffer"], result: "i32" },
  cuDeviceGetCount: { parameters: ["buffer"], result: "i32" },
  cuDeviceGet: { parameters: ["buffer", "i32"], result: "i32" },
  cuDeviceGetName: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  cuDeviceTotalMem_v2: { parameters: ["buffer", "i32"], result: "i32" },
  cuDeviceGetUuid: { parameters: ["buffer", "i32"], result: "i32" },
  // What cuda.h maps cuDeviceGetUuid to: under MIG, the instance's own UUID.
  cuDeviceGetUuid_v2: { parameters: ["buffer", "i32"], result: "i32", optional: true },
} as const;

/**
 * Lock, checkpoint, restore and unlock run on a thread of their own
 * (`nonblocking`): on an H200 a checkpoint of 60 GB took 28 s and its restore
 * 9 s, which on the calling thread would stall the node agent's event loop
 * (heartbeats, probes, every other pod) as long.
 */
const STEP = {
  parameters: ["i32", "buffer"],
  result: "i32",
  optional: true,
  nonblocking: true,
} as const;

const CHECKPOINT = {
  cuCheckpointProcessGetState: { parameters: ["i32", "buffer"], result: "i32", optional: true },
  cuCheckpointProcessLock: STEP,
  cuCheckpointProcessCheckpoint: STEP,
  cuCheckpointProcessRestore: STEP,
  cuCheckpointProcessUnlock: STEP,
  cuCheckpointProcessGetRestoreThreadId: {
    parameters: ["i32", "buffer"],
    result: "i32",
    optional: true,
  },
} as const;

const SYMBOLS = { ...CORE, ...CHECKPOINT } as const;

type Lib = Deno.DynamicLibrary<typeof SYMBOLS>;

/** What opening the driver gave: the library, or why there is none. */
export type OpenResult = { cuda: LibCuda; reason?: undefined } | {
  cuda?: undefined;
  reason: string;
};

/**
 * Opens the driver (`INFERX_LIBCUDA` or `libcuda.so.1`) and initialises it.
 * Never throws: a missing library, symbol or device is a `reason`.
 */
export function openLibCuda(path = Deno.env.get("INFERX_LIBCUDA") ?? "libcuda.so.1"): OpenResult {
  // GPUs numbered as nvidia-smi, NVML and the container toolkit number them (by PCI bus), not
  // fastest first (CUDA's default): the numbers go into workers' CUDA_VISIBLE_DEVICES and
  // Docker's device requests. Read by cuInit: set before it, unless the operator chose.
  if (!Deno.env.get("CUDA_DEVICE_ORDER")) Deno.env.set("CUDA_DEVICE_ORDER", "PCI_BUS_ID");
  let lib: Lib;
  try {
    lib = Deno.dlopen(path, SYMBOLS);
  } catch (err) {
    // The runtime says its "Could not open library: " twice over the system's reason.
    const why = (err as Error).message.replace(/^(Could not open library: )+/, "");
    return { reason: `Cannot load ${path}: ${why}` };
  }
  const cuda = new LibCuda(lib);
  try {
    cuda.init();
  } catch (err) {
    cuda.close();
    return { reason: `Cannot initialise the CUDA driver: ${(err as Error).message}` };
  }
  return { cuda };
}

/** An opened, initialised CUDA driver. */
export class LibCuda {
  #lib: Lib;
  /** Nonblocking calls running on other threads, with the argument buffers they read. */
  #inFlight = new Set<Uint8Array>();
  #closed = false;

  constructor(lib: Lib) {
    this.#lib = lib;
  }

  /** Whether the driver has the process checkpoint API (driver 570+). */
  get hasCheckpointApi(): boolean {
    // A missing nonblocking symbol is a function that throws when called, not
    // null: the blocking ones tell (the API came whole, with driver 570: 550 had
    // only the cuda-checkpoint tool's private interface).
    return !this.#closed && this.#lib.symbols.cuCheckpointProcessGetState !== null &&
      this.#lib.symbols.cuCheckpointProcessGetRestoreThreadId !== null;
  }

  /** The library, unless it was closed (a call into an unloaded library would crash). */
  #live(call: string): Lib["symbols"] {
    if (this.#closed) throw new InferxError("unavailable", `${call}: the CUDA driver was closed`);
    return this.#lib.symbols;
  }

  #check(call: string, result: number): void {
    if (result !== 0) throw new CudaError(call, result);
  }

  /** `cuInit(0)`. */
  init(): void {
    this.#check("cuInit", this.#live("cuInit").cuInit(0));
  }

  /** The driver's CUDA version, e.g. 12080 for 12.8. */
  driverVersion(): number {
    const v = new Int32Array(1);
    this.#check("cuDriverGetVersion", this.#live("cuDriverGetVersion").cuDriverGetVersion(v));
    return v[0];
  }

  /** Every GPU: name, memory and UUID. */
  devices(): CudaDevice[] {
    const count = new Int32Array(1);
    const lib = this.#live("cuDeviceGetCount");
    this.#check("cuDeviceGetCount", lib.cuDeviceGetCount(count));
    const out: CudaDevice[] = [];
    for (let ordinal = 0; ordinal < count[0]; ordinal++) {
      const dev = new Int32Array(1);
      this.#check("cuDeviceGet", lib.cuDeviceGet(dev, ordinal));
      const name = new Uint8Array(256);
      this.#check("cuDeviceGetName", lib.cuDeviceGetName(name, name.length, dev[0]));
      const mem = new BigUint64Array(1);
      this.#check("cuDeviceTotalMem_v2", lib.cuDeviceTotalMem_v2(mem, dev[0]));
      // The physical GPU's UUID (v1), and under MIG the instance's own (v2, where the driver
      // has it): the two differ only for a MIG instance, which its tools name `MIG-`.
      const uuid = new Uint8Array(16);
      this.#check("cuDeviceGetUuid", lib.cuDeviceGetUuid(uuid, dev[0]));
      let mig = false;
      if (lib.cuDeviceGetUuid_v2) {
        const own = new Uint8Array(16);
        this.#check("cuDeviceGetUuid_v2", lib.cuDeviceGetUuid_v2(own, dev[0]));
        mig = own.some((b, i) => b !== uuid[i]);
        uuid.set(own);
      }
      const end = name.indexOf(0);
      out.push({
        ordinal,
        name: new TextDecoder().decode(name.subarray(0, end < 0 ? name.length : end)),
        totalMemMB: Number(mem[0] / 1048576n),
        uuid: formatUuid(uuid, mig ? "MIG" : "GPU"),
      });
    }
    return out;
  }

  #checkpointCall<K extends keyof typeof CHECKPOINT>(
    name: K,
  ): NonNullable<Lib["symbols"][K]> {
    const fn = this.#live(name)[name];
    if (!fn || !this.hasCheckpointApi) {
      throw new InferxError(
        "unsupported",
        `${name} is missing: this driver has no process checkpoint API`,
      );
    }
    return fn as NonNullable<Lib["symbols"][K]>;
  }

  /** Runs one of the nonblocking steps and checks its result. */
  async #step(
    name:
      | "cuCheckpointProcessLock"
      | "cuCheckpointProcessCheckpoint"
      | "cuCheckpointProcessRestore"
      | "cuCheckpointProcessUnlock",
    pid: number,
    args: Uint8Array | null = null,
  ): Promise<void> {
    const call = this.#checkpointCall(name);
    // The set holds `args` (the other thread reads it) and tells close() to wait.
    const entry = args ?? new Uint8Array(0);
    this.#inFlight.add(entry);
    let result: number;
    try {
      result = await call(pid, args);
    } finally {
      this.#inFlight.delete(entry);
      if (this.#closed && this.#inFlight.size === 0) this.#lib.close();
    }
    this.#check(name, result);
  }

  /** The checkpoint state of process `pid`. */
  processState(pid: number): CudaProcessState {
    const s = new Int32Array(1);
    this.#check(
      "cuCheckpointProcessGetState",
      this.#checkpointCall("cuCheckpointProcessGetState")(pid, s),
    );
    return STATES[s[0]] ?? `unknown(${s[0]})`;
  }

  /** Locks the process's CUDA calls; waits up to `timeoutMs` (0: no limit). */
  lock(pid: number, timeoutMs = 0): Promise<void> {
    // CUcheckpointLockArgs: unsigned int timeoutMs, reserved0; cuuint64_t reserved1[7].
    const args = new Uint8Array(64);
    new DataView(args.buffer).setUint32(0, timeoutMs, true);
    return this.#step("cuCheckpointProcessLock", pid, args);
  }

  /** Moves a locked process's GPU memory into its host memory and frees the GPU. */
  checkpoint(pid: number): Promise<void> {
    return this.#step("cuCheckpointProcessCheckpoint", pid);
  }

  /** Copies a checkpointed process's memory back to the GPU; it stays locked. */
  restore(pid: number): Promise<void> {
    return this.#step("cuCheckpointProcessRestore", pid);
  }

  /** Lets a locked process call CUDA again. */
  unlock(pid: number): Promise<void> {
    return this.#step("cuCheckpointProcessUnlock", pid);
  }

  /** The thread id of the process's CUDA restore thread. */
  restoreThreadId(pid: number): number {
    const tid = new Int32Array(1);
    this.#check(
      "cuCheckpointProcessGetRestoreThreadId",
      this.#checkpointCall("cuCheckpointProcessGetRestoreThreadId")(pid, tid),
    );
    return tid[0];
  }

  /**
   * Unloads the library; once the nonblocking calls in flight have returned,
   * when there are any (unloading it under them would crash the process).
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#inFlight.size === 0) this.#lib.close();
  }
}

/** Formats 16 UUID bytes as the driver's tools do: `GPU-8-4-4-4-12` hex (`MIG-` for an instance). */
export function formatUuid(b: Uint8Array, kind: "GPU" | "MIG" = "GPU"): string {
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${kind}-${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${
    h.slice(20)
  }`;
}
