#!/usr/bin/env bash
# A virtualenv with the newest MLflow release on the package index (scripts/test.sh tests the
# registry and queue on it, next to the oldest supported and the lock's version):
#
#   bash scripts/mlflow-newest.sh VENV      # prints the version it installed, last
#
# The project and its test extra as scripts/bootstrap.sh installs them, then MLflow moved to the
# newest release. Where that release does not resolve because its mlflow-tracing (pinned ==) is not
# on the index this machine reaches (3.18.0, 2026-12-03), mlflow-skinny is installed at the release
# (it resolves: it does not need mlflow-tracing) and mlflow itself without dependencies: the files of
# mlflow-tracing are a byte-identical subset of mlflow-skinny's, so the installed `mlflow` package is
# the release's own. `pip check` must then report nothing but that pin.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:?usage: scripts/mlflow-newest.sh VENV}"
HOKUSAI_VENV="$VENV" bash "$ROOT/scripts/bootstrap.sh"
pip="$VENV/bin/pip"
newest="$("$pip" index versions mlflow 2>/dev/null | sed -n 's/^mlflow (\(.*\))$/\1/p')"
[ -n "$newest" ] || { echo "cannot read MLflow's newest release from the package index (pip index versions mlflow)" >&2; exit 1; }
installed() { "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("mlflow"), m.version("mlflow-skinny"))'; }
if [ "$(installed)" != "$newest $newest" ]; then
  if ! "$pip" install --quiet "mlflow==$newest" 2>"$VENV/.mlflow-newest.err"; then
    echo "==> mlflow $newest does not resolve here ($(grep -m1 -o 'No matching distribution found for [^ ]*' "$VENV/.mlflow-newest.err" || echo 'see pip')):"
    echo "    mlflow-skinny $newest with its dependencies, then mlflow $newest without them (mlflow-tracing's files are a subset of mlflow-skinny's)"
    "$pip" install --quiet "mlflow-skinny==$newest"
    "$pip" install --quiet --no-deps "mlflow==$newest"
  fi
fi
unmet="$("$pip" check 2>&1 | grep -v -e '^No broken requirements' -e "requirement mlflow-tracing==$newest" || true)"
if [ -n "$unmet" ]; then
  echo "unmet requirements beside mlflow-tracing: $unmet" >&2
  exit 1
fi
echo "mlflow $(installed | cut -d' ' -f1)"
