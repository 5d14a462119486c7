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

"${DENO[@]}" install --quiet
"${DENO[@]}" fmt --check
"${DENO[@]}" lint
"${DENO[@]}" check main.ts 'src/**/*.ts' 'bench/**/*.ts'
"${DENO[@]}" test -A --permit-no-files "$@"
