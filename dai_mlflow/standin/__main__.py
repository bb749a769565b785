"""CLI: ``python -m dai_mlflow.standin --out DIR --dai-version 1.10|2 --problem PROBLEM``.

Writes ``DIR/scorer.zip`` and what goes beside it, and prints where they are;
``--runtime-mb 800 --runtime-files 3000`` makes the runtime wheel as heavy as a real one.
argparse, not click: the builder must also run in a pipeline's own bare interpreter (DAI's pins
only), which is how the stand-in proves it writes the same bytes on Python 3.8 and 3.11.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from dai_mlflow.errors import report_error
from dai_mlflow.standin.builder import StandinError, build_pipeline
from dai_mlflow.standin.lines import DAI_LINES, PROBLEMS


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m dai_mlflow.standin``."""
    p = argparse.ArgumentParser(
        prog="python -m dai_mlflow.standin",
        description="Build a DAI-shaped stand-in Python scoring pipeline (scorer.zip).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--dai-version", choices=sorted(DAI_LINES), default="1.10", help="DAI line")
    p.add_argument("--problem", choices=PROBLEMS, default="binary", help="problem type")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the model")
    p.add_argument(
        "--runtime-mb", type=int, default=0, help="MiB of native-library-like blobs in h2oaicore"
    )
    p.add_argument("--runtime-files", type=int, default=0, help="extra modules in h2oaicore")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Build, print a summary (one ``key=value`` line a file); return the exit code."""
    args = parser().parse_args(argv)
    started = time.monotonic()
    try:
        build = build_pipeline(
            args.out, args.dai_version, args.problem, args.seed, args.runtime_mb, args.runtime_files
        )
    except (OSError, StandinError) as e:
        return report_error(e)
    print(
        f"built DAI {build.dai_version} {build.problem} stand-in pipeline "
        f"(Python {build.python}, target {build.target!r}) in {time.monotonic() - started:.1f}s"
    )
    fields = {
        "scorer_zip": build.zip_path,
        "license": build.license_path,
        "sample_input": build.sample_input_csv,
        "holdout": build.holdout_csv,
    }
    for key, value in fields.items():
        print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
