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
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing ${missing[*]} from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "Cannot install ${missing[*]} (needs root and apt-get): the tests that need them will be skipped"
  fi
fi

"${DENO[@]}" install --quiet
"${DENO[@]}" fmt --check
"${DENO[@]}" lint
"${DENO[@]}" check main.ts 'src/**/*.ts' 'bench/**/*.ts' 'sim/**/*.ts'
"${DENO[@]}" test -A --permit-no-files "$@"
