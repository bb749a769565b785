"""The model's own HTTP server: ``/invocations``, ``/rpc``, ``/metrics`` with adaptive batching.

Shipped in every logged model (``code/dai_mlflow/model/serving``), started in the model's env by
``python -m dai_mlflow_model_hooks.serve --model-path DIR``. :func:`has_own_server` and
:data:`SERVER_MODULE` tell launchers how to run it. Stdlib only at import time (a worker imports
the scorer, MLflow, pandas, prometheus_client); Python 3.8-safe. See docs/serving.md, section 0.
"""

import os
from typing import Any

# This package's modules (what every logged model carries in code/dai_mlflow/model/serving).
MODULES = (
    "__init__.py",
    "__main__.py",
    "app.py",
    "batching.py",
    "cli.py",
    "http.py",
    "inference_log.py",
    "metrics.py",
)
# The command: python -m SERVER_MODULE with the model's code/ first on PYTHONPATH (in a model env
# the hooks wheel's `python -m dai_mlflow_model_hooks.serve` does that itself).
SERVER_MODULE = "dai_mlflow.model.serving"
# Names of the served model for metrics and the inference log (launchers know them).
MODEL_NAME_ENV = "DAI_MLFLOW_MODEL_NAME"
MODEL_VERSION_ENV = "DAI_MLFLOW_MODEL_VERSION"


def has_own_server(model_dir: Any) -> bool:
    """Whether the model folder carries this server (models logged since it exists)."""
    cli = os.path.join(str(model_dir), "code", "dai_mlflow", "model", "serving", "cli.py")
    return os.path.isfile(cli)
