#!/usr/bin/env bash
# Shared set-up for scripts/test.sh, scripts/demo.sh and bench/: a project-local virtualenv
# with the package and its test extra installed. Safe to run again: it reinstalls only when
# pyproject.toml (or the pin below) changed since the last install.
# HOKUSAI_VENV chooses the folder; HOKUSAI_PIN adds requirements that narrow the declared ranges
# (scripts/test.sh uses both for the oldest-supported-MLflow venv, e.g. HOKUSAI_PIN='mlflow==3.4.*').
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HOKUSAI_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.hokusai-installed"
pin="${HOKUSAI_PIN:-}"
lock="$ROOT/image-requirements.lock"
# Without a pin, the image's lock constrains the install: the suite runs on exactly what the Docker
# image installs, whatever PyPI released since (tests/test_compose.py checks the two agree).
constraints=()
if [ -z "$pin" ] && [ -f "$lock" ]; then constraints=(-c "$lock"); fi
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] || [ "$lock" -nt "$stamp" ] ||
   [ "$(cat "$stamp")" != "$pin" ]; then
  echo "==> installing hokusai-registry and its test extra into $VENV ${pin:+($pin) }(first run takes about a minute)"
  "$VENV/bin/pip" install --quiet --upgrade pip >/dev/null 2>&1 || true
  # shellcheck disable=SC2086  # the pin is a space-separated list of requirements
  "$VENV/bin/pip" install --quiet -e "$ROOT[test]" $pin "${constraints[@]}"
  printf '%s' "$pin" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
