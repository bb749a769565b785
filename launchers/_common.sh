# shellcheck shell=bash
# Shared helpers for launchers/*.sh: strict mode, paths, host-Python discovery, error helpers.
# Sourced, never run. The heavy lifting lives in `python -m dai_mlflow.envs.venvs`.
set -o errexit -o nounset -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENVS="${DAI_MLFLOW_VENVS:-$ROOT/venvs}"
LAUNCHER_VENV="$VENVS/launcher"
MLPROJECT_VENV="$VENVS/mlproject"
SPARK_VENV="$VENVS/spark_inference"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

_die() {
  printf 'Error: %s\n' "$*" >&2
  exit 1
}

_require_cmd() {
  local cmd="$1" hint="$2"
  command -v "$cmd" >/dev/null 2>&1 || _die "$cmd not found; $hint"
}

# Print a host interpreter that MLflow 3.x supports (>= 3.10): DAI_MLFLOW_HOST_PYTHON, then
# python3 on PATH, then the newest 3.1x that dai_mlflow.envs.pythons finds (pyenv, uv).
_host_python() {
  local candidate version
  for candidate in "${DAI_MLFLOW_HOST_PYTHON:-}" python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    version="$("$candidate" -c 'import sys; print("%d%02d" % sys.version_info[:2])' 2>/dev/null)" || continue
    if [ "$version" -ge 310 ]; then
      command -v "$candidate"
      return 0
    fi
  done
  _require_cmd python3 "install Python >= 3.10 (e.g. apt-get install python3) or set DAI_MLFLOW_HOST_PYTHON"
  for version in 3.13 3.12 3.11 3.10; do
    if candidate="$(python3 -m dai_mlflow.envs.pythons "$version" 2>/dev/null | cut -f3)"; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  _die "no Python >= 3.10 found for venvs/launcher (MLflow 3.x needs it); install one (pyenv install 3.11) or set DAI_MLFLOW_HOST_PYTHON"
}

# The launcher venv's python: $VENVS/launcher, else this checkout's venvs/launcher (so a scratch
# DAI_MLFLOW_VENVS can receive new venvs built by the existing launcher). Call it in an
# assignment (`py="$(_launcher_python)"`): errexit then stops the script when it fails.
_launcher_python() {
  local venv
  for venv in "$LAUNCHER_VENV" "$ROOT/venvs/launcher"; do
    if [ -x "$venv/bin/python" ]; then
      printf '%s\n' "$venv/bin/python"
      return 0
    fi
  done
  _die "venvs/launcher is missing; run \`make venvs\` first"
}
