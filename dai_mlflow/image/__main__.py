"""``python -m dai_mlflow.image build ...`` = ``dai-mlflow image build ...`` (no install needed)."""

import sys

from dai_mlflow.cli import entry_point
from dai_mlflow.image.cli import image

image.name = "python -m dai_mlflow.image"
sys.exit(entry_point(image)())
