#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: installs what it needs, starts what is down.
# Extra arguments go to pytest (e.g. scripts/test.sh -k registry -x).
# The whole suite (no arguments) runs on the MLflow the lock pins (image-requirements.lock). Beside
# it run the registry and queue tests on the oldest supported MLflow (the newest 3.4.x) and then on
# the newest release (scripts/mlflow-newest.sh), each in a virtualenv this script installs and keeps
# (.venv-mlflow-oldest, .venv-mlflow-newest; HOKUSAI_SKIP_MLFLOW_VERSIONS=1 skips both, and then the
# network-namespace and object-store tests run in the main suite instead), and the Docker stack test
# (scripts/stack-test.sh: it needs root; HOKUSAI_SKIP_STACK_TEST=1 skips it, and so does a non-root
# run outside CI, saying so; with CI=true a non-root run fails instead).
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
if [ "$#" -ne 0 ]; then
  exec python -m pytest "$@"
fi
# The MLflow version passes run beside the main suite (their own virtualenvs, Redis databases 14 and
# 13, and PostgreSQL databases): most of all of it is waiting on servers and workers, and in sequence
# the main suite and one pass took ~16 minutes on 2 cores. Their output is printed after the main suite's.
VERSION_TESTS=(
  tests/test_registry.py tests/test_registry_server.py tests/test_registry_compat.py tests/test_backfill.py
  tests/test_queue.py tests/test_served_artifacts.py tests/test_direct_database.py
  tests/test_store_setup.py tests/test_doctor.py
)
#: Minutes of waiting on servers and workers: run beside the suite too, on Redis database 12 (the
#: bench smoke and the hosts start servers of their own; the shutdown test uses the database).
BESIDE_TESTS=(tests/test_hosts.py tests/test_object_store.py tests/test_bench_smoke.py tests/test_shutdown.py)
versions_pid=""
if [ -z "${HOKUSAI_SKIP_MLFLOW_VERSIONS:-}" ]; then
  versions_log="$(mktemp -t hokusai-mlflow-versions.XXXXXX)"
  (
    rc=0
    echo "==> the registry and queue tests on the oldest supported MLflow (${OLDEST_MLFLOW:=mlflow==3.4.*})"
    { HOKUSAI_VENV="$ROOT/.venv-mlflow-oldest" HOKUSAI_PIN="$OLDEST_MLFLOW" bash scripts/bootstrap.sh &&
      HOKUSAI_TEST_REDIS_DB=14 "$ROOT/.venv-mlflow-oldest/bin/python" -m pytest -p no:cacheprovider \
        -k "not test_200_jobs" "${VERSION_TESTS[@]}"; } || rc=1
    echo "==> the registry and queue tests on the newest MLflow release"
    { bash scripts/mlflow-newest.sh "$ROOT/.venv-mlflow-newest" &&
      HOKUSAI_TEST_REDIS_DB=13 "$ROOT/.venv-mlflow-newest/bin/python" -m pytest -p no:cacheprovider \
        -k "not test_200_jobs" "${VERSION_TESTS[@]}"; } || rc=1
    echo "==> the hosts in network namespaces, the object store, the bench smoke and the shutdown (run here to share the wait)"
    HOKUSAI_TEST_REDIS_DB=12 python -m pytest -p no:cacheprovider "${BESIDE_TESTS[@]}" || rc=1
    exit "$rc"
  ) > "$versions_log" 2>&1 &
  versions_pid=$!
fi
# The Docker stack test runs beside them too: most of it is image builds and waiting on containers.
stack_pid=""
stack_rc=0
if [ -z "${HOKUSAI_SKIP_STACK_TEST:-}" ]; then
  if [ "$(id -u)" = 0 ]; then
    stack_log="$(mktemp -t hokusai-stack-test.XXXXXX)"
    bash scripts/stack-test.sh >"$stack_log" 2>&1 &
    stack_pid=$!
  elif [ "${CI:-}" = true ]; then
    echo "==> FAILED: scripts/stack-test.sh needs root (apt-get, dockerd), and CI runs it" >&2
    stack_rc=1
  else
    echo "==> not root: the Docker stack test (scripts/stack-test.sh) is not run; run it as root"
  fi
fi
main_rc=0
ignore=()
[ -n "$versions_pid" ] && for test in "${BESIDE_TESTS[@]}"; do ignore+=(--ignore "$test"); done
python -m pytest --durations=25 "${ignore[@]}" || main_rc=$?
versions_rc=0
if [ -n "$versions_pid" ]; then
  wait "$versions_pid" || versions_rc=$?
  echo "==> the MLflow version passes, run beside the suite"
  cat "$versions_log"
  rm -f "$versions_log"
fi
if [ -n "$stack_pid" ]; then
  wait "$stack_pid" || stack_rc=$?
  echo "==> the Docker stack (bash scripts/stack-test.sh), run beside the suite"
  cat "$stack_log"
  rm -f "$stack_log"
fi
if [ "$main_rc" -ne 0 ] || [ "$versions_rc" -ne 0 ] || [ "$stack_rc" -ne 0 ]; then
  echo "==> FAILED: main suite exit $main_rc, MLflow version passes exit $versions_rc, stack test exit $stack_rc" >&2
  exit 1
fi
