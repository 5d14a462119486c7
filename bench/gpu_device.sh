#!/usr/bin/env bash
# Everything GPU-shaped, in one run on a machine with a GPU and no package
# registry: discovery through FFI, the GPU end-to-end test (two workers by
# vRAM slice, host-memory park and restore, a third that waits for vRAM, a
# slice too big refused), a probe of cuInit in each kind of namespace,
# bench/gpu_restore.ts (host-memory tier at two model sizes, then the file
# tier after a GPU checkpoint; before the test, as its figures matter most)
# and bench/gateway.ts with 1, 2, 4 and 8 gateway workers. Each step has its
# own time limit and its own output file; a failing step does not stop the
# others.
#
#   here:  bash bench/gpu_device.sh pack    # Deno, node_modules, CRIU, wrk, nginx, ip into .device/
#   there: bash bench/gpu_device.sh run OUT_DIR [model MB,MB] [gateway seconds]
#
# STEPS picks steps (default: machine discovery namespaces restore e2e
# gateway); GATEWAY_COUNTS the gateway's worker counts (default: 1 2 4 8),
# GATEWAY_ROUNDS its rounds (default: 1; bench/gateway.ts reads its other
# GATEWAY_* settings from the environment);
# ROUNDS, FILE_NETNS (on, off, both) and WEIGHTS_DIR go to
# bench/gpu_restore.ts.
#
# `pack` writes into .device/ (git-ignored; take it along): the Deno binary
# and node_modules, xz-compressed, with setup.sh that puts them in place
# there (`run` sources it); the CRIU prefix (.criu/, from `deno task criu`);
# and wrk, nginx, ip and nsenter with the libraries they need beyond libc.
# About 48 MB.
set -uo pipefail
cd "$(dirname "$0")/.."

pack() {
  set -e
  grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
  deno install --quiet
  rm -rf .device && mkdir -p .device
  xz -T0 -6 -c "$(readlink -f "$(command -v deno)")" > .device/deno.xz
  tar cf - node_modules | xz -T0 -6 > .device/node_modules.tar.xz
  cat > .device/setup.sh <<'SETUP'
# Sourced from the project root where no registry answers: Deno on PATH,
# node_modules in place, npm packages from node_modules only.
mkdir -p /tmp/deno-bin
[ -x /tmp/deno-bin/deno ] || { xz -dc .device/deno.xz > /tmp/deno-bin/deno && chmod +x /tmp/deno-bin/deno; }
[ -d node_modules ] || xz -dc .device/node_modules.tar.xz | tar xf -
export PATH=/tmp/deno-bin:$PATH DENO_NO_UPDATE_CHECK=1 DENO_DIR=/tmp/deno-dir
echo "deno $(deno --version | head -1 | cut -d' ' -f2) ready; run with --cached-only"
SETUP
  [ -x .criu/usr/sbin/criu ] || deno task criu
  tar cf - --exclude='.criu/usr/share' .criu | xz -T0 -6 > .device/criu.tar.xz
  local t
  t=$(mktemp -d)
  mkdir -p "$t/bin" "$t/lib"
  for b in wrk nginx ip nsenter; do
    p=$(command -v "$b") && cp "$p" "$t/bin/"
    ldd "$p" | awk '/=> \//{print $3}' | grep -Ev '/(libc|libm|libpthread|libdl|librt|libgcc_s)\.so' |
      xargs -r cp -L -t "$t/lib/"
  done
  tar cf - -C "$t" bin lib | xz -T0 -6 > .device/tools.tar.xz
  rm -rf "$t"
  du -sh .device | cut -f1 | sed 's/^/packed .device: /'
}

# Puts what .device/ carries in place: CRIU in .criu/, and wrk, nginx, ip and
# nsenter on PATH where the machine has none (each with its own libraries).
unpack() {
  source .device/setup.sh
  [ -f .device/criu.tar.xz ] && [ ! -d .criu ] && xz -dc .device/criu.tar.xz | tar xf -
  if [ -f .device/tools.tar.xz ]; then
    mkdir -p /tmp/inferx-tools/wrap
    xz -dc .device/tools.tar.xz | tar xf - -C /tmp/inferx-tools
    for b in /tmp/inferx-tools/bin/*; do
      n=$(basename "$b")
      command -v "$n" >/dev/null && continue
      printf '#!/bin/sh\nLD_LIBRARY_PATH=/tmp/inferx-tools/lib exec %s "$@"\n' "$b" \
        > "/tmp/inferx-tools/wrap/$n"
      chmod +x "/tmp/inferx-tools/wrap/$n"
    done
    export PATH=$PATH:/tmp/inferx-tools/wrap
  fi
}

# step NAME SECONDS COMMAND...: runs it under a limit, output to $OUT/NAME.txt.
step() {
  local name=$1 limit=$2
  shift 2
  echo "=== $name ($(date -u +%H:%M:%S), limit ${limit} s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  tail -c 6000 "$OUT/$name.txt"
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
}

# Whether CUDA initialises in each kind of namespace a pod may get (cuInit's
# CUresult and the device count, through ctypes): host, network only, PID
# only, PID with its own /proc, network + PID as the process runtime starts
# pods without GPUs, and network + own session as it starts GPU pods.
namespaces() {
  local probe='import ctypes, os
l = ctypes.CDLL("libcuda.so.1"); n = ctypes.c_int(-1); r = l.cuInit(0)
if r == 0: l.cuDeviceGetCount(ctypes.byref(n))
print("getpid", os.getpid(), "cuInit", r, "devices", n.value)'
  ls -l /dev/nvidia* 2>&1 | sed 's/^/  /'
  ip netns add ixgpuprobe 2>/dev/null
  local ns=/run/netns/ixgpuprobe
  for v in "host:" "net:nsenter --net=$ns --" "pid:unshare --pid --fork" \
    "pid+proc:unshare --pid --fork --mount-proc" \
    "net+pid+setsid:nsenter --net=$ns -- unshare --pid --fork setsid" \
    "net+setsid:nsenter --net=$ns -- setsid"; do
    echo "${v%%:*}: $(timeout 60 ${v#*:} python3 -c "$probe" 2>&1 | tail -1)"
  done
  ip netns del ixgpuprobe
}

run() {
  OUT=${1:?usage: run OUT_DIR [sizes] [gateway seconds]}
  local sizes=${2:-20000,60000} secs=${3:-3}
  mkdir -p "$OUT"
  unpack
  has machine && step machine 60 bash -c 'nvidia-smi; nvidia-smi -q | grep -iE "driver version|cuda version|product name|persistence|compute mode|total" | head -20; uname -a; nproc; free -g; df -h /tmp . | tail -2; python3 -c "import torch, sys; print(sys.executable, torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))"; for b in ip nsenter unshare setsid wrk nginx; do echo "$b: $(command -v $b)"; done'
  has discovery && step discovery 60 deno eval --cached-only 'import { discover } from "./src/nodeagent/discover.ts";
    const node = await discover({ name: "gpu-node", address: "127.0.0.1", gpus: [], cpuMillis: 16000, memMB: 131072, runtime: "process" });
    console.log(JSON.stringify({ gpus: node.gpus, gpuDriver: node.gpuDriver, criu: node.criu }, null, 2));'
  has namespaces && step namespaces 120 bash bench/gpu_device.sh namespaces
  has restore && step restore 300 deno run -A --cached-only bench/gpu_restore.ts "--sizes=$sizes" \
    --rounds="${ROUNDS:-3}" --file-mb=2000 --file-netns="${FILE_NETNS:-both}" \
    ${WEIGHTS_DIR:+--weights-dir=$WEIGHTS_DIR}
  has e2e && step e2e "${E2E_LIMIT:-200}" deno test -A --cached-only tests/e2e/gpu_test.ts
  if has gateway; then
    for w in ${GATEWAY_COUNTS:-1 2 4 8}; do
      WRK_THREADS=4 step "gateway-$w" $((secs * 5 * ${GATEWAY_ROUNDS:-1} + 60)) \
        deno run -A --cached-only bench/gateway.ts "$secs" 64 "$w" "${GATEWAY_ROUNDS:-1}"
    done
    cat "$OUT"/gateway-*.txt > "$OUT/gateway.txt" && rm -f "$OUT"/gateway-?.txt
  fi
}

# has STEP: whether $STEPS (default: every step) names it.
has() { [[ " ${STEPS:-machine discovery namespaces restore e2e gateway} " == *" $1 "* ]]; }

case "${1:-}" in
  pack) pack ;;
  namespaces) namespaces ;;
  run) shift && run "$@" ;;
  *) echo "usage: bash bench/gpu_device.sh pack | run OUT_DIR [model MB,MB] [gateway seconds]" >&2; exit 2 ;;
esac
