"""What ships inside every logged model (its ``code/dai_mlflow/``) and runs in the model's env.

Python 3.8-safe; stdlib, pandas and MLflow only:

* :mod:`.pyfunc`: the pyfunc (``DaiScoringModel``) that scores with the DAI ``Scorer``;
* :mod:`.runtime`: the scorer's working folder, the process fixes, the guard against ``sys.exit``;
* :mod:`.experiment`: each model's experiment wheel, loaded from its artifacts by content hash;
* :mod:`.license`: where the license is, never what it is;
* :mod:`.hooks`: installed into every model env as ``dai_mlflow_model_hooks`` (a wheel with a
  ``.pth``): interpreter-start fixes and the servers MLflow and Spark talk to.

``from dai_mlflow.model import DaiScoringModel`` is what every logged model's code file runs: a
contract with models already logged, kept here. It is resolved lazily, so importing
:mod:`.hooks` (on a Spark executor, say) does not import MLflow.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "DaiScoringModel":
        from dai_mlflow.model.pyfunc import DaiScoringModel

        return DaiScoringModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
