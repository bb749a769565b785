#!/usr/bin/env bash
# Build (or reuse) venvs/launcher: host Python + mlflow 3.x, pyspark 4.x, uv, virtualenv, pytest.
# Usage: launchers/build_launcher_venv.sh [--quiet]
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

_main() {
  local quiet=() host version
  case "${1:-}" in
    "") ;;
    --quiet) quiet=(--quiet) ;;
    *) _die "usage: $0 [--quiet]" ;;
  esac
  host="$(_host_python)"
  version="$("$host" -c 'import platform; print(platform.python_version())')"
  # Build with exactly this interpreter, not another of the same version found first.
  export "DAI_MLFLOW_PYTHON_$(printf '%s' "${version%.*}" | tr . _)=$host"
  "$host" -m dai_mlflow.envs.venvs requirements "${quiet[@]}" \
    --dest "$LAUNCHER_VENV" --python "$version" \
    --requirements "$ROOT/launchers/requirements-launcher.txt" \
    --installer uv --site-path "$ROOT"
  # uv (used by `mlflow run --env-manager uv` and spark_udf) finds DAI's Pythons through these.
  "$LAUNCHER_VENV/bin/python" -m dai_mlflow.envs.pythons --link "$VENVS/pythons" --activate "$LAUNCHER_VENV" >/dev/null
}

_main "$@"
