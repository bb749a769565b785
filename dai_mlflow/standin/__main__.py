"""CLI: ``python -m dai_mlflow.standin --out DIR --dai-version 1.10|2 --problem PROBLEM``.

Writes ``DIR/scorer.zip`` (and ``DIR/scoring-pipeline/``, ``DIR/license.sig``,
``DIR/sample_input.csv``, ``DIR/holdout.csv``) and prints where they are.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from dai_mlflow.errors import DaiMlflowError
from dai_mlflow.standin.builder import build_pipeline
from dai_mlflow.standin.lines import DAI_LINES, PROBLEMS


def main(argv: Optional[List[str]] = None) -> int:
    """Parse options, build, print a summary; a one-line error and exit 1 on failure."""
    parser = argparse.ArgumentParser(
        prog="python -m dai_mlflow.standin",
        description="Build a DAI-shaped stand-in Python scoring pipeline (scorer.zip).",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--dai-version", choices=sorted(DAI_LINES), default="1.10")
    parser.add_argument("--problem", choices=PROBLEMS, default="binary")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        build = build_pipeline(args.out, args.dai_version, args.problem, args.seed)
    except (DaiMlflowError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"built DAI {build.dai_version} {build.problem} stand-in pipeline "
        f"(Python {build.python}, target {build.target!r}) in {time.monotonic() - started:.1f}s"
    )
    print(f"scorer_zip={build.zip_path}")
    print(f"license={build.license_path}")
    print(f"sample_input={build.sample_input_csv}")
    print(f"holdout={build.holdout_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
