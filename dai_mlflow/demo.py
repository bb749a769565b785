"""`make demo`: the main job end to end on a sample DAI-shaped pipeline, with embedded defaults.

Steps (each a real command a user would type, run as a subprocess from ``venvs/launcher``):

1. build the DAI-shaped stand-in pipeline (``python -m dai_mlflow.standin``) into
   ``data/generated/``, with the license it writes beside ``scorer.zip``;
2. ``mlflow run . -P pipeline=…/scorer.zip -P model_name=dai_demo``: log and register it;
3. ``spark_inference/score.py``: batch-score the sample input with ``spark_udf`` into
   ``data/output/predictions.parquet``.

No server and no env var is needed: tracking uses the project's embedded default. The demo is
the one product file besides the tests that imports the stand-in builder.
Run: ``make demo`` (or ``venvs/launcher/bin/python -m dai_mlflow.demo --help``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import click

from dai_mlflow.cli import HELP, run_click

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "data" / "generated"
OUTPUT = ROOT / "data" / "output"
MODEL_URI_PREFIX = "model_uri="


class DemoError(Exception):
    """A demo step failed; the message says which and how to look closer."""


def _step(n: int, total: int, text: str) -> None:
    print(f"\n==> [{n}/{total}] {text}", flush=True)


def _run(cmd: Sequence[str], env: Optional[Dict[str, str]] = None) -> str:
    """Run a command, streaming its output; return its stdout."""
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: List[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
    if proc.wait() != 0:
        raise DemoError(f"`{Path(str(cmd[0])).name} …` failed (exit {proc.returncode}); see above")
    print(f"   ({time.monotonic() - started:.1f}s)", flush=True)
    return "".join(lines)


def _last_model_uri(stdout: str) -> str:
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    if not lines or not lines[-1].startswith(MODEL_URI_PREFIX):
        raise DemoError("`mlflow run` did not print model_uri=<uri> as its last line")
    return lines[-1][len(MODEL_URI_PREFIX) :]


def run_demo(dai_version: str, problem: str, env_manager: str) -> int:
    """Run the demo steps that have landed; say plainly which are still to come."""
    python = sys.executable
    bin_dir = Path(python).parent
    out_dir = GENERATED / f"dai-{dai_version}-{problem}"
    total = 3

    _step(1, total, f"build a DAI {dai_version} {problem} stand-in pipeline into {out_dir}")
    if not (ROOT / "dai_mlflow" / "standin").is_dir():
        print("   not yet available: the stand-in builder (issue 3). Nothing else to run.")
        return 0
    _run([python, "-m", "dai_mlflow.standin", "--out", out_dir, "--dai-version", dai_version,
          "--problem", problem])  # fmt: skip
    zip_path = out_dir / "scorer.zip"
    license_env = {"DRIVERLESS_AI_LICENSE_FILE": str(out_dir / "license.sig")}

    _step(2, total, "log and register it with `mlflow run .` (embedded tracking default)")
    if not (ROOT / "MLproject").is_file():
        print("   not yet available: the MLflow Project entry point (issue 4).")
        return 0
    stdout = _run(
        [bin_dir / "mlflow", "run", ".", "-P", f"pipeline={zip_path}",
         "-P", "model_name=dai_demo"],
        env=license_env,
    )  # fmt: skip
    model_uri = _last_model_uri(stdout)
    print(f"   logged: {model_uri}")

    _step(3, total, f"batch-score {out_dir / 'sample_input.csv'} with spark_udf ({env_manager})")
    score_py = ROOT / "spark_inference" / "score.py"
    if not score_py.is_file():
        print("   not yet available: spark_inference/score.py (issue 5).")
        return 0
    OUTPUT.mkdir(parents=True, exist_ok=True)
    output = OUTPUT / "predictions.parquet"
    _run(
        [python, score_py, "--model-uri", model_uri, "--input", out_dir / "sample_input.csv",
         "--output", output, "--env-manager", env_manager],
        env=license_env,
    )  # fmt: skip
    import pandas as pd

    frame = pd.read_parquet(output)
    print(f"\n{len(frame)} rows scored -> {output}\n{frame.head().to_string()}")
    print(
        f"\nDone. Browse the run: {bin_dir / 'mlflow'} ui --backend-store-uri sqlite:///mlflow.db"
    )
    return 0


@click.command(name="python -m dai_mlflow.demo", context_settings=HELP, help=__doc__.split("\n")[0])
@click.option("--dai-version", type=click.Choice(("1.10", "2")), default="1.10", show_default=True)
@click.option(
    "--problem",
    type=click.Choice(("binary", "multiclass", "regression")),
    default="binary",
    show_default=True,
)
@click.option(
    "--env-manager",
    type=click.Choice(("uv", "virtualenv", "local")),
    default="uv",
    show_default=True,
)
def cli(dai_version: str, problem: str, env_manager: str) -> int:
    """Run the demo steps; 0 when all passed."""
    try:
        return run_demo(dai_version, problem, env_manager)
    except DemoError as e:
        raise click.ClickException(str(e)) from e


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point of ``make demo``."""
    return run_click(cli, argv)


if __name__ == "__main__":
    sys.exit(main())
