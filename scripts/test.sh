#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: installs what it needs, starts what is down.
# Extra arguments go to pytest (e.g. scripts/test.sh -k registry -x).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/bootstrap.sh
bash scripts/services.sh
if [ "$#" -eq 0 ]; then  # the whole suite: code health first (a filtered run skips it)
  echo "==> ruff check, ruff format --check, mypy"
  ruff check .
  ruff format --check .
  mypy
fi
exec python -m pytest "$@"
