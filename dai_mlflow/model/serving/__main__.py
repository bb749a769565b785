"""``python -m dai_mlflow.model.serving``: the model's server (see :mod:`.cli`)."""

import sys

from dai_mlflow.model.serving.cli import main

sys.exit(main())
