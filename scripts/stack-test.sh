#!/usr/bin/env bash
# The shipped stack, built and run for real: docker-compose.yml plus only docker-compose.stand-ins.yml,
# brought up with --wait, then driven from the host through the ports it publishes on 127.0.0.1
# (scripts/stack_check.py), faults included; then `down -v`. One line per check (PASS/FAIL), a closing
# "N passed, N failed" line, and exit 1 when any check failed. docs/stack.md lists the checks.
#
#   bash scripts/stack-test.sh      # as root, on a fresh machine too: installs and starts what it needs
#
# It installs docker.io, mmdebstrap and Compose v2 when absent and starts dockerd when none answers
# (scripts/stack.sh engine); it stops dockerd at the end only if it started it. The stack runs as the
# Compose project hokusai-stack-test (COMPOSE_PROJECT_NAME) on free host ports, so it collides neither
# with a stack of yours nor with the host's own Redis or PostgreSQL. Its .env is .env.example with
# faults recovering in seconds rather than an hour (below); a .env of yours is put back afterwards.
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
dockerd_ours=0
[ -f "$STATE/dockerd.pid" ] && dockerd_ours=1  # left by an earlier run of ours
t=$SECONDS
if ! bash scripts/stack.sh engine; then
  result FAIL "Docker engine and Compose v2" $((SECONDS - t)) "scripts/stack.sh engine failed"
  finish
fi
[ -f "$STATE/dockerd.pid" ] && dockerd_ours=1
result PASS "Docker engine and Compose v2" $((SECONDS - t)) "$(docker version --format 'dockerd {{.Server.Version}}'), compose $(docker compose version --short)"

# ---- what the stack is started with ---------------------------------------------------------------
env_backup=""
if [ -f .env ]; then
  env_backup="$STATE/env.before-stack-test"
  cp -p .env "$env_backup"
fi
cleanup() {
  docker compose down -v --remove-orphans --timeout 30 >/dev/null 2>&1 || true
  if [ "$dockerd_ours" = 1 ]; then bash scripts/stack.sh down >/dev/null 2>&1 || true; fi
  if [ -n "$env_backup" ]; then mv -f "$env_backup" .env; else rm -f .env; fi
}
trap cleanup EXIT
{
  cat .env.example
  cat <<'EOF'

# ---- scripts/stack-test.sh: faults recover in seconds ------------------------------------------
# A killed worker's job comes back after VISIBILITY_TIMEOUT_S (must exceed TASK_TIME_LIMIT_S plus the
# largest backoff cap); an unreachable receiver dead-letters after WEBHOOK_MAX_ATTEMPTS.
VISIBILITY_TIMEOUT_S=40
TASK_TIME_LIMIT_S=25
REGISTRY_BACKOFF_MAX_S=10
WEBHOOK_BACKOFF_MAX_S=10
UNACKED_RESTORE_INTERVAL_S=5
WEBHOOK_MAX_ATTEMPTS=2
WEBHOOK_BACKOFF_BASE_S=1
EOF
} >.env
# Free host ports, all on loopback: the host's own Redis (6379) and PostgreSQL stay untouched.
read -r REDIS_PUBLISH_PORT MLFLOW_PUBLISH_PORT FLOWER_PUBLISH_PORT PROMETHEUS_PUBLISH_PORT GRAFANA_PUBLISH_PORT < <(
  python3 -c "
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks: s.bind(('127.0.0.1', 0))
print(*(s.getsockname()[1] for s in socks))"
)
export REDIS_PUBLISH_PORT MLFLOW_PUBLISH_PORT FLOWER_PUBLISH_PORT PROMETHEUS_PUBLISH_PORT GRAFANA_PUBLISH_PORT
export FLOWER_PUBLISH_ADDRESS=127.0.0.1

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

# ---- build and up ---------------------------------------------------------------------------------
t=$SECONDS
if bash scripts/stack.sh build >"$STATE/build.log" 2>&1; then
  result PASS "local base, project image and stand-ins built" $((SECONDS - t)) "$(grep -E '^==> (base image|built)' "$STATE/build.log" | sed 's/^==> //' | paste -sd ';' -)"
else
  result FAIL "local base, project image and stand-ins built" $((SECONDS - t)) "see $STATE/build.log: $(tail -n 3 "$STATE/build.log" | tr '\n' ' ')"
  finish
fi
t=$SECONDS
if bash scripts/stack.sh up >"$STATE/up.log" 2>&1; then
  result PASS "docker compose up --wait: every service healthy" $((SECONDS - t)) "$(docker compose ps --format '{{.Service}}' | sort | uniq -c | awk '{print $2"x"$1}' | paste -sd ' ' -)"
else
  result FAIL "docker compose up --wait: every service healthy" $((SECONDS - t)) "$(tail -n 5 "$STATE/up.log" | tr '\n' ' ') $(docker compose ps --all --format '{{.Name}}={{.Status}}' | paste -sd ' ' -)"
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

# ---- down -v leaves nothing behind ---------------------------------------------------------------
t=$SECONDS
docker compose down -v --remove-orphans --timeout 60 >"$STATE/down.log" 2>&1
label="label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"
left="$(docker ps -aq --filter "$label" | wc -l) containers, $(docker network ls -q --filter "$label" | wc -l) networks, $(docker volume ls -q --filter "$label" | wc -l) volumes"
if [ "$left" = "0 containers, 0 networks, 0 volumes" ]; then
  result PASS "docker compose down -v leaves nothing behind" $((SECONDS - t)) "$left left"
else
  result FAIL "docker compose down -v leaves nothing behind" $((SECONDS - t)) "$left left"
fi
finish
