"""`make demo`: the main job end to end on a sample DAI-shaped pipeline, with embedded defaults.

Three real commands, each a subprocess from ``venvs/launcher``: build the stand-in pipeline
(``python -m dai_mlflow.standin``) into ``data/generated/``; ``mlflow run . -P pipeline=...
-P model_name=dai_demo``; ``spark_inference/score.py`` into ``data/output/predictions.parquet``.
The screen shows each step's time and result, their output goes to ``data/output/demo.log`` (a
failed step's is printed whole). No server or env var is needed. The one product module
besides the tests that imports the stand-in builder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import click

from dai_mlflow.cli import HELP, entry_point
from dai_mlflow.envs.model_env import ENV_MANAGERS
from dai_mlflow.errors import DaiMlflowError

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "data" / "generated"
OUTPUT = ROOT / "data" / "output"
LOG = OUTPUT / "demo.log"
MODEL_URI_PREFIX = "model_uri="


class DemoError(DaiMlflowError):
    """A demo step failed; the message says which and where its output is."""


class Steps:
    """Runs the demo's commands: one line a step on the screen, all their output in ``log``."""

    def __init__(self, total: int, log: Path) -> None:
        self.total, self.done, self.log = total, 0, log
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")

    def run(self, text: str, cmd: Sequence[object], env: Optional[Dict[str, str]] = None) -> str:
        """Run ``cmd`` as step ``text``; return its stdout. Failure prints its whole output."""
        self.done += 1
        print(f"[{self.done}/{self.total}] {text} ...", end=" ", flush=True)
        argv = [str(c) for c in cmd]
        started = time.monotonic()
        with self.log.open("a") as log:
            log.write(f"\n$ {' '.join(argv)}\n")
            log.flush()
            proc = subprocess.run(
                argv, cwd=ROOT, env={**os.environ, **(env or {})},
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            log.write(proc.stdout)
        seconds = time.monotonic() - started
        if proc.returncode != 0:
            print(f"failed after {seconds:.1f}s; its output:\n", flush=True)
            sys.stdout.write(proc.stdout)
            raise DemoError(
                f"step {self.done} (`{Path(argv[0]).name} ...`) failed with exit code "
                f"{proc.returncode}; every step's output is in {self.log}"
            )
        print(f"done in {seconds:.1f}s", flush=True)
        return proc.stdout


def _field(stdout: str, prefix: str, step: str) -> str:
    found = [ln.strip()[len(prefix) :] for ln in stdout.splitlines() if ln.startswith(prefix)]
    if not found:
        raise DemoError(f"{step} did not print {prefix}<value>; its output is in {LOG}")
    return found[-1]


def run_demo(dai_version: str, problem: str, env_manager: str) -> int:
    """Build a stand-in pipeline, log and register it with `mlflow run`, score it with Spark."""
    python = sys.executable
    bin_dir = Path(python).parent
    out_dir = GENERATED / f"dai-{dai_version}-{problem}"
    license_env = {"DRIVERLESS_AI_LICENSE_FILE": str(out_dir / "license.sig")}
    output = OUTPUT / "predictions.parquet"
    steps = Steps(3, LOG)
    print(f"dai-mlflow demo: DAI {dai_version} {problem}; commands' output goes to {LOG}")
    print("(a first run builds the envs it needs, which takes a few minutes)")

    steps.run(
        f"build a DAI {dai_version} {problem} stand-in pipeline",
        [python, "-m", "dai_mlflow.standin", "--out", out_dir, "--dai-version", dai_version,
         "--problem", problem],
    )  # fmt: skip
    print(f"      pipeline: {out_dir / 'scorer.zip'}")

    stdout = steps.run(
        "log and register it: mlflow run . -P pipeline=... -P model_name=dai_demo",
        [bin_dir / "mlflow", "run", ".", "-P", f"pipeline={out_dir / 'scorer.zip'}",
         "-P", "model_name=dai_demo"],
        env=license_env,
    )  # fmt: skip
    model_uri = _field(stdout, MODEL_URI_PREFIX, "mlflow run")
    print(f"      model: {model_uri}")

    steps.run(
        f"batch-score sample_input.csv with spark_udf (env manager {env_manager})",
        [python, ROOT / "spark_inference" / "score.py", "--model-uri", model_uri,
         "--input", out_dir / "sample_input.csv", "--output", output,
         "--env-manager", env_manager],
        env=license_env,
    )  # fmt: skip
    import pandas as pd

    frame = pd.read_parquet(output)
    print(f"      {len(frame)} rows scored -> {output}\n")
    print(frame.head().to_string())
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
    type=click.Choice(ENV_MANAGERS),
    default="uv",
    show_default=True,
)
def cli(dai_version: str, problem: str, env_manager: str) -> int:
    """Run the demo steps; 0 when all passed."""
    return run_demo(dai_version, problem, env_manager)


main = entry_point(cli)


if __name__ == "__main__":
    sys.exit(main())
