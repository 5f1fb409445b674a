#!/usr/bin/env bash
# Run the whole pipeline once on embedded defaults: MLflow on sqlite under ./.hokusai, the
# Redis at REDIS_URL (or a local redis-server when none answers), a real worker, a local
# receiver that verifies the webhook's signatures. Installs what it needs on the first run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/bootstrap.sh
export HOKUSAI_HOME="${HOKUSAI_HOME:-$ROOT/.hokusai}"
exec hokusai-registry demo "$@"
