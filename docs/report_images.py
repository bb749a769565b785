"""Make the README's pictures of the two reports: ``docs/img/validation_report.png`` and
``docs/img/drift_report.png`` (``make report-images``).

Runs the real ``validate`` and ``monitor`` code on the DAI-shaped stand-in models the test suite
caches (``tests/.cache``; built on first use): the worse stand-in becomes champion, the better
one is promoted over it (the validation report shows both), then a window of fresh rows with
four features moved is scored by the champion and monitored (the drift report). Each report is
opened in headless Chromium (Debian's ``chromium`` package) and its first screen saved as PNG.

    venvs/launcher/bin/python docs/report_images.py [--out docs/img]

Everything happens in a temporary folder (its own tracking store); nothing else is touched.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

NAME = "churn"
WINDOW_DAY = "2026-11-21"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
)  # fmt: skip


def screenshot(html: Path, png: Path, width: int, height: int, work: Path) -> None:
    """Save the first ``width`` x ``height`` pixels of ``html`` as rendered by Chromium."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("error: chromium is not installed (apt-get install -y chromium)")
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=str(work)))
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
           f"--window-size={width},{height}", html.as_uri()]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not png.is_file():
        raise SystemExit(f"error: chromium failed: {proc.stderr[-500:]}")


def _shifted_window(path: Path) -> Path:
    """600 fresh rows from the stand-in's generator with four features moved."""
    from dai_mlflow.standin import data as standin_data

    return standin_data.write_window(path, 777, shift=True)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "img")
    args = parser.parse_args(argv)

    import mlflow
    import mlflow.artifacts
    import pandas as pd

    from dai_mlflow.lifecycle import scoring, tables
    from dai_mlflow.lifecycle.monitor import MonitorRequest, monitor
    from dai_mlflow.lifecycle.validate import ValidateRequest, validate
    from tests.fixtures_lifecycle import LifecycleStore, get_worse_model_dir
    from tests.fixtures_model import MODEL_ENV_ROOT, get_logged_model
    from tests.fixtures_standin import get_standin

    build = get_standin("1.10", "binary")
    good, worse = get_logged_model("1.10", "binary").local_dir, get_worse_model_dir()
    work = Path(tempfile.mkdtemp(prefix="dai-mlflow-report-images-"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    os.environ.update(
        MLFLOW_TRACKING_URI=uri, DAI_MLFLOW_ENV_ROOT=str(MODEL_ENV_ROOT),
        UV_PYTHON_DOWNLOADS="never", **build.license_env(),
    )  # fmt: skip
    os.chdir(work)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    store = LifecycleStore(uri, work)
    try:
        store.register(worse, NAME, "challenger")
        validate(ValidateRequest(NAME, build.holdout_csv))
        version = store.register(good, NAME, "challenger")
        promoted = validate(ValidateRequest(NAME, build.holdout_csv))

        window = _shifted_window(work / "window.csv")
        frame = pd.read_csv(window)
        frame = pd.concat([frame, scoring.score_file(good, window)], axis=1)
        frame["model_name"], frame["model_version"] = NAME, version
        frame["model_uri"] = f"models:/{NAME}/{version}"
        frame["scored_at"] = pd.Timestamp(f"{WINDOW_DAY}T01:00:00")
        tables.write_frame(work / "scored", WINDOW_DAY, frame)
        drifted = monitor(
            MonitorRequest(NAME, str(work / "scored"), str(work / "monitoring"), WINDOW_DAY)
        )
        args.out.mkdir(parents=True, exist_ok=True)
        for run_id, name, size in (
            (promoted.run_id, "validation_report", (1200, 1250)),
            (drifted.run_id, "drift_report", (1200, 1500)),
        ):
            html = Path(
                mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=f"{name}.html", dst_path=str(work / name)
                )
            )
            screenshot(html, args.out / f"{name}.png", size[0], size[1], work)
            print(f"wrote {args.out / f'{name}.png'} from run {run_id}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
