#!/usr/bin/env bash
# Build (or reuse) venvs/spark_inference for one logged model: the model's Python and
# requirements plus a pyspark that supports that Python (3.5.x for 3.8, 4.x for 3.11).
# Usage: launchers/build_spark_venv.sh MODEL_URI
#        launchers/build_spark_venv.sh --python-env FILE --requirements FILE
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

_usage() {
  _die "usage: $0 MODEL_URI | --python-env python_env.yaml --requirements requirements.txt"
}

_main() {
  local python_env="" requirements="" python
  case "${1:-}" in
    "" | -h | --help) _usage ;;
    --python-env)
      [ $# -eq 4 ] && [ "$3" = "--requirements" ] || _usage
      python_env="$2"
      requirements="$4"
      ;;
    *)
      [ $# -eq 1 ] || _usage
      ;;
  esac
  python="$(_launcher_python)"
  # The venv sees this checkout's dai_mlflow (spark_inference/score.py, the debug launcher).
  if [ -n "$python_env" ]; then
    "$python" -m dai_mlflow.envs.spark_venv --dest "$SPARK_VENV" --site-path "$ROOT" \
      --python-env "$python_env" --requirements "$requirements"
  else
    "$python" -m dai_mlflow.envs.spark_venv --model-uri "$1" --dest "$SPARK_VENV" --site-path "$ROOT"
  fi
  # Plain spark_udf(env_manager="virtualenv") from this venv restores model envs offline too, and
  # its MLflow 2.17 reads models:/ URIs of an MLflow 3 sqlite store through the launcher's MLflow.
  "$python" -m dai_mlflow.envs.pythons --link "$VENVS/pythons" --activate "$SPARK_VENV" \
    --export "DAI_MLFLOW_SERVER_PYTHON=$python" >/dev/null
}

_main "$@"
