#!/usr/bin/env bash
# The shipped stack, built and run for real: the README's "For platform engineers" Docker lines, word for
# word (read from README.md by scripts/doc_block.py), on docker-compose.yml plus only
# docker-compose.stand-ins.yml; between their `up` and `down`, the checks of scripts/stack_check.py,
# driven from the host through the ports the stack publishes on 127.0.0.1, faults included. One line per
# check (PASS/FAIL), a closing "N passed, N failed" line, and exit 1 when any check failed. docs/stack.md
# lists the checks.
#
#   bash scripts/stack-test.sh      # as root, on a fresh machine too: installs and starts what it needs
#
# It installs docker.io, mmdebstrap and Compose v2 when absent and starts dockerd when none answers
# (scripts/stack.sh engine); it stops dockerd at the end only if it started it. The stack runs as the
# Compose project hokusai-stack-test (COMPOSE_PROJECT_NAME) on free loopback ports (the *_PUBLISH_PORT
# variables), so it collides neither with a stack of yours nor with the host's own Redis or PostgreSQL.
# After the README's `up`, it adds to .env the settings that make faults recover in seconds rather than
# an hour (below) and brings the stack up again with them; a .env of yours is put back afterwards.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-hokusai-stack-test}"
export COMPOSE_FILE="docker-compose.yml:docker-compose.stand-ins.yml"
BASE_IMAGE="$(bash scripts/stack.sh base-name)"  # given, or the local one scripts/stack.sh builds
export BASE_IMAGE
STATE="$ROOT/.hokusai/stack"
PIPELINE_VENV="$STATE/pipeline-venv"
mkdir -p "$STATE"
passed=0
failed=0
result() {  # result PASS|FAIL NAME SECONDS DETAIL
  printf '%-5s %s (%ss): %s\n' "$1" "$2" "$3" "$4"
  if [ "$1" = PASS ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
}
finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit $?
}

# ---- the engine (installed and started when absent) ----------------------------------------------
# scripts/stack.sh remembers a dockerd it started in $STATE/dockerd.pid, and the README's
# `scripts/stack.sh down` would stop it; this script holds that file while it runs, so the engine
# outlives the README's `down` long enough to check what it left, and stops it at the end only if it
# started it (a pid file from before this run is given back untouched).
held_pid="$STATE/dockerd.held-by-stack-test.pid"
dockerd_ours=0
dockerd_before=0
[ -f "$STATE/dockerd.pid" ] && dockerd_before=1
t=$SECONDS
if ! bash scripts/stack.sh engine; then
  result FAIL "Docker engine and Compose v2" $((SECONDS - t)) "scripts/stack.sh engine failed"
  finish
fi
if [ -f "$STATE/dockerd.pid" ]; then
  mv -f "$STATE/dockerd.pid" "$held_pid"
  [ "$dockerd_before" = 0 ] && dockerd_ours=1
fi
result PASS "Docker engine and Compose v2" $((SECONDS - t)) "$(docker version --format 'dockerd {{.Server.Version}}'), compose $(docker compose version --short)$([ "$dockerd_ours" = 1 ] && echo ', dockerd started here')"

# ---- what the stack is started with ---------------------------------------------------------------
env_backup=""
if [ -f .env ]; then
  env_backup="$STATE/env.before-stack-test"
  cp -p .env "$env_backup"
fi
cleanup() {
  docker compose down -v --remove-orphans --timeout 30 >/dev/null 2>&1 || true
  if [ -f "$held_pid" ]; then
    mv -f "$held_pid" "$STATE/dockerd.pid"
    if [ "$dockerd_ours" = 1 ]; then bash scripts/stack.sh down >/dev/null 2>&1 || true; fi
  fi
  if [ -n "$env_backup" ]; then mv -f "$env_backup" .env; else rm -f .env; fi
}
trap cleanup EXIT
# Free host ports, all on loopback: the host's own Redis (6379) and PostgreSQL stay untouched.
read -r REDIS_PUBLISH_PORT MLFLOW_PUBLISH_PORT FLOWER_PUBLISH_PORT PROMETHEUS_PUBLISH_PORT GRAFANA_PUBLISH_PORT < <(
  python3 -c "
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks: s.bind(('127.0.0.1', 0))
print(*(s.getsockname()[1] for s in socks))"
)
export REDIS_PUBLISH_PORT MLFLOW_PUBLISH_PORT FLOWER_PUBLISH_PORT PROMETHEUS_PUBLISH_PORT GRAFANA_PUBLISH_PORT

# ---- the host pipeline's virtualenv: the package without extras, at the image's versions (beside the build)
(
  set -e
  [ -x "$PIPELINE_VENV/bin/python" ] || python3 -m venv "$PIPELINE_VENV"
  stamp="$PIPELINE_VENV/.installed"
  if [ ! -f "$stamp" ] || [ image-requirements.lock -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$PIPELINE_VENV/bin/pip" install --quiet -c image-requirements.lock . setuptools
    touch "$stamp"
  fi
  "$PIPELINE_VENV/bin/pip" install --quiet --no-deps --no-build-isolation --force-reinstall .
) >"$STATE/pipeline-venv.log" 2>&1 &
venv_pid=$!
venv_start=$SECONDS

# ---- the README's lines, word for word ------------------------------------------------------------
# Each runs as a user types it, in the checkout, with only the documented variables above (and
# BASE_IMAGE, the local base); the lines from its `scripts/stack.sh down` on run after the checks.
readme_lines=()
mapfile -t readme_lines < <(python3 scripts/doc_block.py README.md scripts/stack-test.sh)
if [ "${#readme_lines[@]}" -eq 0 ]; then
  result FAIL "the README's platform lines" 0 "scripts/doc_block.py found no block marked <!-- run by: scripts/stack-test.sh -->"
  finish
fi
readme_before=()
readme_after=()
for line in "${readme_lines[@]}"; do
  if [ "${#readme_after[@]}" -gt 0 ] || [[ "$line" == "scripts/stack.sh down"* ]]; then
    readme_after+=("$line")
  else
    readme_before+=("$line")
  fi
done
readme_step=0
run_readme_line() {  # run_readme_line LINE: one PASS/FAIL line; returns the line's exit status
  local line="$1" log rc begun=$SECONDS
  readme_step=$((readme_step + 1))
  log="$STATE/readme-$readme_step.log"
  env -u COMPOSE_FILE bash -euo pipefail -c "$line" >"$log" 2>&1
  rc=$?
  if [ "$rc" = 0 ]; then
    result PASS "README: $line" $((SECONDS - begun)) "$(grep -E '^==> ' "$log" | sed 's/^==> //' | paste -sd ';' - | cut -c1-300)"
  else
    result FAIL "README: $line" $((SECONDS - begun)) "exit $rc, see $log: $(tail -n 4 "$log" | tr '\n' ' ' | cut -c1-400)"
  fi
  return "$rc"
}
for line in "${readme_before[@]}"; do
  run_readme_line "$line" || finish
done

# ---- faults recover in seconds: the test's settings, then up again -------------------------------
t=$SECONDS
cat >>.env <<'SETTINGS'

# ---- scripts/stack-test.sh: faults recover in seconds ------------------------------------------
# A killed worker's job comes back after VISIBILITY_TIMEOUT_S (must exceed TASK_TIME_LIMIT_S plus the
# largest backoff cap); an unreachable receiver dead-letters after WEBHOOK_RETRY_SCHEDULE (one retry, 1 s).
VISIBILITY_TIMEOUT_S=40
TASK_TIME_LIMIT_S=25
REGISTRY_BACKOFF_MAX_S=10
WEBHOOK_BACKOFF_MAX_S=10
UNACKED_RESTORE_INTERVAL_S=5
WEBHOOK_RETRY_SCHEDULE=1
SETTINGS
if docker compose up -d --wait --wait-timeout 300 --scale worker=3 >"$STATE/up-faults.log" 2>&1; then
  result PASS "up again with the fault timings in .env" $((SECONDS - t)) "$(docker compose ps --format '{{.Service}}' | sort | uniq -c | awk '{print $2"x"$1}' | paste -sd ' ' -)"
else
  result FAIL "up again with the fault timings in .env" $((SECONDS - t)) "$(tail -n 5 "$STATE/up-faults.log" | tr '\n' ' ') $(docker compose ps --all --format '{{.Name}}={{.Status}}' | paste -sd ' ' -)"
  finish
fi
if ! wait "$venv_pid"; then
  result FAIL "the host pipeline's virtualenv" $((SECONDS - venv_start)) "see $STATE/pipeline-venv.log"
  finish
fi

# ---- the checks through the published ports -------------------------------------------------------
check_failed=0
while IFS= read -r line; do
  case "$line" in
    PASS*) passed=$((passed + 1)); echo "$line" ;;
    FAIL*) failed=$((failed + 1)); check_failed=$((check_failed + 1)); echo "$line" ;;
    "exit "*) code="${line#exit }" ;;
    *) echo "$line" ;;
  esac
done < <(env -u PYTHONPATH "$PIPELINE_VENV/bin/python" scripts/stack_check.py 2>"$STATE/stack-check.stderr"; echo "exit $?")
if [ "${code:-1}" != 0 ] && [ "$check_failed" = 0 ]; then  # it died before reporting a failure
  result FAIL "scripts/stack_check.py ran to the end" 0 "exit ${code:-?}: $(tail -n 3 "$STATE/stack-check.stderr" | tr '\n' ' ')"
fi

# ---- the README's `down`, then nothing left behind ------------------------------------------------
for line in "${readme_after[@]}"; do
  run_readme_line "$line"
done
t=$SECONDS
label="label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"
left="$(docker ps -aq --filter "$label" | wc -l) containers, $(docker network ls -q --filter "$label" | wc -l) networks, $(docker volume ls -q --filter "$label" | wc -l) volumes"
if [ "$left" = "0 containers, 0 networks, 0 volumes" ]; then
  result PASS "nothing of the project left behind" $((SECONDS - t)) "$left left"
else
  result FAIL "nothing of the project left behind" $((SECONDS - t)) "$left left"
fi
finish
