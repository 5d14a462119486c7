import assert from "node:assert/strict";
import { CudaError, formatUuid, openLibCuda } from "./libcuda.ts";
import { buildFakeLibCuda, fakeLibCudaUnavailable } from "./testing.ts";

const missing = fakeLibCudaUnavailable();
if (missing) console.log(`skipping the libcuda FFI tests: ${missing}`);
const buildFake = buildFakeLibCuda;

const t = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, ignore: missing !== undefined, fn });

t(
  "openLibCuda() discovers GPUs: names, memory and UUIDs cross the FFI boundary intact",
  async () => {
    const { cuda, reason } = openLibCuda(await buildFake());
    assert.ok(cuda, reason);
    try {
      assert.equal(cuda.driverVersion(), 12080);
      assert.equal(cuda.hasCheckpointApi, true);
      assert.deepEqual(cuda.devices(), [
        {
          ordinal: 0,
          name: "Fake H100 80GB HBM3",
          totalMemMB: 81559,
          uuid: "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f",
        },
        {
          ordinal: 1,
          name: "Fake H100 80GB HBM3",
          totalMemMB: 81559,
          uuid: "GPU-10111213-1415-1617-1819-1a1b1c1d1e1f",
        },
      ]);
    } finally {
      cuda.close();
    }
  },
);

t("the checkpoint API walks running, locked, checkpointed and back", async () => {
  const { cuda } = openLibCuda(await buildFake());
  assert.ok(cuda);
  try {
    const pid = 4321;
    assert.equal(cuda.processState(pid), "running");
    await cuda.lock(pid, 7000);
    assert.equal(cuda.processState(pid), "locked");
    assert.equal(cuda.restoreThreadId(pid), pid + 7000, "the lock timeout reached the driver");
    await cuda.checkpoint(pid);
    assert.equal(cuda.processState(pid), "checkpointed");
    await cuda.restore(pid);
    assert.equal(cuda.processState(pid), "locked");
    await cuda.unlock(pid);
    assert.equal(cuda.processState(pid), "running");
  } finally {
    cuda.close();
  }
});

t("checkpoint calls out of order or on bad pids fail with the CUresult name", async () => {
  const { cuda } = openLibCuda(await buildFake());
  assert.ok(cuda);
  try {
    const cases: [() => unknown, string][] = [
      [() => cuda.checkpoint(77), "CUDA_ERROR_ILLEGAL_STATE"], // running, not locked
      [() => cuda.unlock(78), "CUDA_ERROR_ILLEGAL_STATE"],
      [() => cuda.restore(79), "CUDA_ERROR_ILLEGAL_STATE"],
      [() => cuda.lock(0), "CUDA_ERROR_INVALID_VALUE"],
      [() => cuda.processState(424242), "CUDA_ERROR_NOT_FOUND"],
    ];
    for (const [call, name] of cases) {
      await assert.rejects(async () => await call(), (err: unknown) => {
        assert.ok(err instanceof CudaError);
        assert.equal(err.resultName, name);
        assert.match(err.message, new RegExp(name));
        return true;
      });
    }
    await cuda.lock(80);
    await assert.rejects(
      cuda.lock(80),
      /cuCheckpointProcessLock failed: CUDA_ERROR_ILLEGAL_STATE/,
    );
  } finally {
    cuda.close();
  }
});

t(
  "checkpoint and restore run off the event loop: timers fire while the driver copies",
  async () => {
    // On an H200 the driver took 28 s to checkpoint 60 GB; the fake takes 400 ms a copy.
    Deno.env.set("FAKE_CUDA_COPY_MS", "400");
    const { cuda } = openLibCuda(await buildFake());
    assert.ok(cuda);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 20);
    try {
      await cuda.lock(555);
      const t0 = performance.now();
      await cuda.checkpoint(555);
      await cuda.restore(555);
      assert.ok(performance.now() - t0 >= 750, "the copies took their time");
      assert.ok(ticks >= 10, `the event loop ran ${ticks} timer ticks during 800 ms of copies`);
      await cuda.unlock(555);
    } finally {
      clearInterval(timer);
      Deno.env.delete("FAKE_CUDA_COPY_MS");
      cuda.close();
    }
  },
);

t("closing the driver while a checkpoint runs waits for it; later calls are refused", async () => {
  Deno.env.set("FAKE_CUDA_COPY_MS", "300");
  const { cuda } = openLibCuda(await buildFake());
  assert.ok(cuda);
  try {
    await cuda.lock(556);
    const copying = cuda.checkpoint(556);
    cuda.close(); // the library stays loaded under the call (unloading it would crash)
    await copying;
    await assert.rejects(cuda.unlock(556), /the CUDA driver was closed/);
    assert.throws(() => cuda.processState(556), /the CUDA driver was closed/);
    assert.throws(() => cuda.devices(), /the CUDA driver was closed/);
    assert.equal(cuda.hasCheckpointApi, false);
  } finally {
    Deno.env.delete("FAKE_CUDA_COPY_MS");
    cuda.close();
  }
});

t("a driver without the checkpoint API is a missing capability, not a crash", async () => {
  const { cuda } = openLibCuda(await buildFake(["-DNO_CHECKPOINT"]));
  assert.ok(cuda);
  try {
    assert.equal(cuda.hasCheckpointApi, false);
    assert.equal(cuda.devices().length, 2);
    await assert.rejects(cuda.lock(1), /no process checkpoint API/);
  } finally {
    cuda.close();
  }
});

t(
  "a MIG instance is named MIG- as nvidia-smi names it; a driver without cuDeviceGetUuid_v2 gives GPU- UUIDs",
  async () => {
    const uuids = async (defines: string[]) => {
      const { cuda, reason } = openLibCuda(await buildFake(defines));
      assert.ok(cuda, reason);
      try {
        return cuda.devices().map((d) => d.uuid);
      } finally {
        cuda.close();
      }
    };
    Deno.env.set("FAKE_CUDA_MIG", "1"); // the fake's device 1 is then a MIG instance
    try {
      assert.deepEqual(await uuids([]), [
        "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f",
        "MIG-a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf",
      ]);
      assert.deepEqual(await uuids(["-DNO_UUID_V2"]), [
        "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f",
        "GPU-10111213-1415-1617-1819-1a1b1c1d1e1f",
      ]);
    } finally {
      Deno.env.delete("FAKE_CUDA_MIG");
    }
  },
);

Deno.test("openLibCuda() reports a missing library as a reason", () => {
  const r = openLibCuda("/nonexistent/libcuda.so.1");
  assert.equal(r.cuda, undefined);
  assert.match(r.reason!, /Cannot load \/nonexistent\/libcuda\.so\.1/);
  // The system's reason once, without the runtime's prefix twice over it.
  assert.equal(
    r.reason,
    "Cannot load /nonexistent/libcuda.so.1: /nonexistent/libcuda.so.1: cannot open shared object file: No such file or directory",
  );
});

Deno.test("formatUuid() prints the driver's GPU- and MIG- forms", () => {
  assert.equal(
    formatUuid(new Uint8Array(16).fill(0xab)),
    "GPU-abababab-abab-abab-abab-abababababab",
  );
  assert.equal(
    formatUuid(new Uint8Array(16).fill(0x01), "MIG"),
    "MIG-01010101-0101-0101-0101-010101010101",
  );
});
