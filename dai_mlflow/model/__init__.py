"""What ships inside every logged model (its ``code/dai_mlflow/``) and runs in the model's env.

:mod:`.pyfunc`, :mod:`.runtime`, :mod:`.experiment`, :mod:`.license`, :mod:`.hooks` (the hooks
wheel), :mod:`.serving`. ``from dai_mlflow.model import DaiScoringModel`` is what every logged
model's code file runs (a contract with models already logged); it resolves lazily, so
importing :mod:`.hooks` does not import MLflow. Python 3.8-safe; stdlib, pandas and MLflow
only. See docs/model-envs.md and docs/model-hooks.md.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "DaiScoringModel":
        from dai_mlflow.model.pyfunc import DaiScoringModel

        return DaiScoringModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
