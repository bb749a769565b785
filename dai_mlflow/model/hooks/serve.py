"""``python -m dai_mlflow_model_hooks.serve --model-path DIR ...``: serve a model from its env.

The server itself ships inside each logged model (``DIR/code/dai_mlflow/model/serving``), so it
always matches the model's own pyfunc code and changing it never changes the model env. This
module only puts ``DIR/code`` first on ``sys.path`` and runs that server; it lives in the hooks
wheel so that the command exists in every model env (a restored env, a serving image) without a
dai-mlflow checkout. Stdlib only, Python 3.8-safe.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence

SERVER_PACKAGE = "dai_mlflow.model.serving"


def model_path(argv: Sequence[str]) -> Optional[str]:
    """The value of ``--model-path`` in ``argv`` (``--model-path DIR`` or ``=DIR``)."""
    for i, arg in enumerate(argv):
        if arg == "--model-path" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--model-path="):
            return arg.split("=", 1)[1]
    return None


def main(argv: Optional[List[str]] = None) -> int:
    """Run the model's own server with ``argv``; its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    folder = model_path(args)
    if folder is None:
        if "-h" in args or "--help" in args:
            print("usage: python -m dai_mlflow_model_hooks.serve --model-path DIR [options]")
            return 0
        print("Error: --model-path DIR is required (a logged model's folder)", file=sys.stderr)
        return 2
    code = os.path.join(os.path.abspath(folder), "code")
    if not os.path.isfile(os.path.join(code, *SERVER_PACKAGE.split("."), "__init__.py")):
        print(
            f"Error: {folder} carries no dai-mlflow server ({code}/dai_mlflow/model/serving is "
            "missing): it is not a model folder, or an older dai-mlflow logged it; re-log it, "
            "or serve it with `mlflow models serve`",
            file=sys.stderr,
        )
        return 2
    sys.path.insert(0, code)
    from dai_mlflow.model.serving.cli import main as serve_main

    return int(serve_main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
