#!/usr/bin/env bash
# Build (or reuse) venvs/mlproject: the very env `mlflow run` builds from python_env.yaml
# (same interpreter version, `python -m venv`, then `pip install -r` of build deps, then deps,
# resolved from the project folder), so the entry point can be run and debugged outside MLflow.
# Usage: launchers/build_mlproject_venv.sh [--quiet]
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

_main() {
  local quiet=() python
  case "${1:-}" in
    "") ;;
    --quiet) quiet=(--quiet) ;;
    *) _die "usage: $0 [--quiet]" ;;
  esac
  python="$(_launcher_python)"
  "$python" -m dai_mlflow.envs.venvs python-env "${quiet[@]}" \
    --dest "$MLPROJECT_VENV" --python-env "$ROOT/python_env.yaml" --installer pip
}

_main "$@"
