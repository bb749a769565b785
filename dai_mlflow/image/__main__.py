"""``python -m dai_mlflow.image`` = the ``dai-mlflow`` console script."""

import sys

from dai_mlflow.image.cli import main

sys.exit(main())
