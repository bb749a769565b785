"""The two DAI lines the stand-in imitates: versions, Python, pins, and the lines to drop.

``1.10`` is DAI 1.10 LTS on Python 3.8 with pins of that era; ``2`` is DAI 2.x on Python 3.11.
Every pin is a PyPI wheel for that Python (``uv pip compile --only-binary :all:``). ``pyorc``'s
pin has *no* wheel (a source build, which fails offline) and the bundled ``h2o4gpu`` wheel needs
an old numpy the pins contradict: a naive install fails loudly, as on real machines, and a
correct packager drops both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple


@dataclass(frozen=True)
class DaiLine:
    """Everything that differs between the DAI lines."""

    name: str
    dai_version: str
    python: str
    h2o4gpu_version: str
    requirements: Tuple[str, ...]
    pyorc_pin: str
    constraints: Tuple[str, ...]

    @property
    def cp_tag(self) -> str:
        return "cp" + self.python.replace(".", "")

    @property
    def core_wheel(self) -> str:
        return f"h2oaicore-{self.dai_version}-{self.cp_tag}-{self.cp_tag}-linux_x86_64.whl"

    @property
    def h2o4gpu_wheel(self) -> str:
        return f"h2o4gpu-{self.h2o4gpu_version}-{self.cp_tag}-{self.cp_tag}-linux_x86_64.whl"

    def pin(self, project: str) -> str:
        """The ``project==version`` line of the constraints."""
        for line in self.constraints:
            if line.split("==")[0] == project:
                return line
        raise KeyError(project)


_LINE_1_10 = DaiLine(
    name="1.10",
    dai_version="1.10.7.3",
    python="3.8",
    h2o4gpu_version="0.3.2",
    requirements=(
        "numpy==1.22.0",
        "pandas==1.2.5",
        "python-dateutil==2.8.1",
        "pytz==2021.1",
        "six==1.16.0",
        "tabulate==0.8.9",
        "toml==0.10.2",
        "filelock==3.0.12",
    ),
    # pyorc 0.10.0 has no cp38 wheel (every older one has), so it builds from source and fails.
    pyorc_pin="pyorc==0.10.0",
    constraints=(
        "filelock==3.0.12",
        "joblib==1.0.1",
        "numpy==1.22.0",
        "pandas==1.2.5",
        "pip==21.1",
        "psutil==5.8.0",
        "python-dateutil==2.8.1",
        "pytz==2021.1",
        "scikit-learn==0.24.2",
        "scipy==1.7.0",
        "setuptools==49.6.0",
        "six==1.16.0",
        "tabulate==0.8.9",
        "threadpoolctl==2.2.0",
        "toml==0.10.2",
        "wheel==0.35.1",
    ),
)

_LINE_2 = DaiLine(
    name="2",
    dai_version="2.3.2",
    python="3.11",
    h2o4gpu_version="0.4.1",
    requirements=(
        "numpy==1.26.4",
        "pandas==2.2.2",
        "python-dateutil==2.9.0.post0",
        "pytz==2024.1",
        "tzdata==2024.1",
        "six==1.16.0",
        "tabulate==0.9.0",
        "toml==0.10.2",
        "filelock==3.13.1",
    ),
    # pyorc 0.4.0-0.7.0 have no cp311 wheel (0.8.0+ do): a source build that fails offline.
    pyorc_pin="pyorc==0.7.0",
    constraints=(
        "filelock==3.13.1",
        "joblib==1.4.2",
        "numpy==1.26.4",
        "pandas==2.2.2",
        "pip==24.0",
        "psutil==5.9.8",
        "python-dateutil==2.9.0.post0",
        "pytz==2024.1",
        "scikit-learn==1.5.2",
        "scipy==1.13.1",
        "setuptools==69.5.1",
        "six==1.16.0",
        "tabulate==0.9.0",
        "threadpoolctl==3.5.0",
        "toml==0.10.2",
        "tzdata==2024.1",
        "wheel==0.43.0",
    ),
)

DAI_LINES: Dict[str, DaiLine] = {line.name: line for line in (_LINE_1_10, _LINE_2)}
PROBLEMS = ("regression", "binary", "multiclass")
# What the bundled h2o4gpu wheel requires: a numpy and scikit-learn far older than the pins.
H2O4GPU_REQUIRES = ("numpy==1.16.4", "scikit-learn==0.21.2")
