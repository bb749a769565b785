"""``python -m dai_mlflow.lifecycle validate|batch|monitor ...`` (see :mod:`.cli`)."""

import sys

from dai_mlflow.lifecycle.cli import run

if __name__ == "__main__":
    sys.exit(run())
