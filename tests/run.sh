#!/usr/bin/env bash
# The whole test suite, as the README's test command runs it: gets Deno when
# missing, provisions what the tests need, checks formatting, lint and types,
# then runs every test once.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v deno >/dev/null 2>&1; then
  DENO=(deno)
else
  echo "Deno not found: using it from the npm registry (npx deno@2)"
  DENO=(npx -y deno@2)
fi

# Services the tests start for themselves (on 127.0.0.1, temporary data
# directories, stopped afterwards); installed from Debian when missing.
missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v criu >/dev/null 2>&1 || [ -x /usr/sbin/criu ] || missing+=(criu)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
# The dashboard's browser test drives Debian's headless Chromium.
[ -x /usr/bin/chromium ] || missing+=(chromium)
# The container images test brings its stack up with Compose (Debian 12 ships 1.29).
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 ||
  missing+=(docker-compose)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# The init above each worker in a PID namespace of its own (it reaps what a worker leaves behind).
command -v tini >/dev/null 2>&1 || missing+=(tini)
# The slow-starting sample worker: PyTorch (CPU) from Debian.
/usr/bin/python3 -c 'import torch' >/dev/null 2>&1 || missing+=(python3-torch)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing ${missing[*]} from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "Cannot install ${missing[*]} (needs root and apt-get): the tests that need them will be skipped"
  fi
fi

# A Docker engine for the Docker runtime tests: started here when none
# answers, stopped when the tests end.
started_dockerd=""
cleanup() {
  if [ -n "$started_dockerd" ]; then
    kill "$started_dockerd" 2>/dev/null || true
    wait "$started_dockerd" 2>/dev/null || true
  fi
}
trap cleanup EXIT
if command -v dockerd >/dev/null 2>&1 && ! docker version >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "Starting dockerd for the tests"
    dockerd >/tmp/inferx-test-dockerd.log 2>&1 &
    started_dockerd=$!
    for _ in $(seq 1 60); do docker version >/dev/null 2>&1 && break; sleep 0.5; done
  fi
fi

"${DENO[@]}" install --quiet

# CRIU for the file tier and snapshots: Debian 12's fails its check on newer
# kernels, so one that works is provisioned into .criu/ (Debian unstable's
# packages unpacked into a private prefix; the system is left alone).
if [ -z "${INFERX_CRIU:-}" ] && ! criu check >/dev/null 2>&1 && [ "$(id -u)" = 0 ] &&
  command -v apt-get >/dev/null 2>&1; then
  "${DENO[@]}" run -A src/nodeagent/criu_provision.ts ||
    echo "Cannot provision CRIU: the file-tier and snapshot tests will be skipped"
fi
if docker version >/dev/null 2>&1; then
  "${DENO[@]}" run -A src/samples/ngram/image.ts
else
  echo "No Docker engine: the Docker runtime tests will be skipped"
fi
"${DENO[@]}" fmt --check
"${DENO[@]}" lint
"${DENO[@]}" check main.ts 'src/**/*.ts' 'tests/**/*.ts' 'bench/**/*.ts' 'sim/**/*.ts' 'k8s/**/*.ts' 'deploy/**/*.ts'
"${DENO[@]}" test -A --permit-no-files "$@"
