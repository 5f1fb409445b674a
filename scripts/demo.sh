#!/usr/bin/env bash
# Run the whole pipeline once on embedded defaults: MLflow on sqlite under ./.hokusai, Redis
# database 7 (the demo's own) of the server at REDIS_URL (or a local redis-server when none
# answers), a real worker, a local receiver that verifies the webhook's signatures. It stops
# what it started and deletes the Redis keys it created. Installs what it needs on the first run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/bootstrap.sh
export HOKUSAI_HOME="${HOKUSAI_HOME:-$ROOT/.hokusai}"
exec hokusai-registry demo "$@"
