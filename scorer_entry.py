"""MLflow Project entry point: log a DAI Python scoring pipeline as a pyfunc model.

Run through ``mlflow run . -P pipeline=PATH [-P model_name=NAME] [-P alias=ALIAS]`` (see
``MLproject``), or directly from ``venvs/mlproject`` to debug:
``python scorer_entry.py --pipeline PATH [--model-name NAME] [--alias ALIAS]``.
All logic lives in :mod:`dai_mlflow.log.entry`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dai_mlflow.log.entry import run

if __name__ == "__main__":
    sys.exit(run())
