"""``python -m dai_mlflow.serve``: ``mlflow models serve`` of a model in its own env."""

import sys

from dai_mlflow.serve.server import main

sys.exit(main())
