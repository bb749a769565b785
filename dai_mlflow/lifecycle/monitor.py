"""Drift monitoring: ``mlflow run . -e monitor -P model_name=NAME -P table=DIR -P output=DIR``.

:func:`monitor` reads the batch table's partitions of the window (``date`` and the ``days - 1``
before it), and for each model version that scored rows there compares the inputs with the
version's training baseline (DAI's ``training_data_column_stats.json`` from its
``scoring-pipeline`` artifact) and the predictions with the holdout predictions ``validate``
logged for it (:mod:`.drift`). One row per feature and prediction column, plus the verdict, is
written to the monitoring table's ``date`` partition (replaced on a re-run, :mod:`.tables`; a
folder that is not a monitoring table of ours, or the batch table itself, is refused), and
the run gets ``should_retrain`` (0/1), ``drifted_features``, ``drifted_predictions`` metrics.

After the table is written, the run gets pictures (:mod:`.plots`) under ``plots/v<version>/``
and ``drift_report.html`` (:mod:`.report`): the verdict and its reason, the drift score of every
feature, the prediction distribution against the validation baseline, charts of the most
drifted features and a table of all. Best effort: a failure there is a warning (stderr and the
run tag ``dai_mlflow.plots_error``); the table and the verdict stand.

Pure pandas/numpy: runs in the project env (Python 3.8, no Spark) and in ``venvs/launcher``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import date as Date
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pandas as pd

from dai_mlflow.errors import say
from dai_mlflow.lifecycle import drift, plots, registry, report, tables
from dai_mlflow.lifecycle.errors import LifecycleError
from dai_mlflow.lifecycle.validate import log_page
from dai_mlflow.log.pipeline import read_column_stats
from dai_mlflow.outputs import MONITOR_TABLE, check_partition

MONITOR_COLUMNS = (
    "model_name", "model_version", "kind", "column", "metric", "value", "threshold", "drifted",
    "baseline_missing_rate", "recent_missing_rate", "baseline_source", "note", "n_rows",
    "window_start", "window_end", "status", "should_retrain", "run_id", "computed_at",
)  # fmt: skip


@dataclass(frozen=True)
class MonitorRequest(registry.ModelRequest):
    """Inputs of :func:`monitor`."""

    table: str
    output: str
    day: str = ""
    days: int = 1
    overwrite: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.days < 1:
            raise LifecycleError(f"days must be >= 1, got {self.days}")
        tables.partition_date(self.day)
        # The monitoring table may not be the batch table (its partition would be replaced).
        tables.check_table(
            tables.local_table(self.output),
            MONITOR_TABLE,
            [str(tables.local_table(self.table))],
            self.overwrite,
            "output",
        )

    def window(self, day: str) -> List[str]:
        """The dates the drift window reads, oldest first, ending at ``day``."""
        end = Date.fromisoformat(day)
        return [(end - timedelta(days=k)).isoformat() for k in range(self.days - 1, -1, -1)]


@dataclass(frozen=True)
class MonitorResult:
    run_id: str
    should_retrain: bool
    partition: Path
    frame: pd.DataFrame


def version_baselines(ref: registry.ModelVersionRef, work: Path) -> Dict[str, Any]:
    """Training stats, input and output columns, and the prediction baseline of a version."""
    model_dir = registry.download(ref, work / f"v{ref.version}")
    stats = read_column_stats(drift.find_column_stats(model_dir))
    baseline = None
    run_id = registry.version_tag(ref, registry.BASELINE_RUN_TAG)
    if run_id:
        path = registry.download_run_file(run_id, registry.PREDICTION_BASELINE_FILE)
        if path is not None:
            baseline = json.loads(path.read_text())
            shutil.rmtree(path.parent, ignore_errors=True)
    return {
        "stats": stats,
        "features": drift.signature_names(model_dir),
        "outputs": drift.signature_names(model_dir, outputs=True),
        "prediction_baseline": baseline,
    }


def monitor(request: MonitorRequest) -> MonitorResult:
    """Compute drift for the window and replace the monitoring table's partition.

    Raises:
        DaiMlflowError: any expected failure (one line); the monitoring table is unchanged and
            the run ends FAILED.
    """
    import mlflow

    with mlflow.start_run() as run:
        day = tables.partition_date(request.day)
        window = request.window(day)
        source = tables.local_table(request.table)
        out_table = tables.local_table(request.output)
        check_partition(tables.partition_dir(out_table, day), request.overwrite, "output")
        registry.log_params_once(
            {
                "model_name": request.model_name,
                "table": str(source),
                "output": str(out_table),
                "date": day,
                "days": request.days,
            }
        )
        recent = tables.read_partitions(source, window)
        if "model_version" not in recent.columns:
            raise LifecycleError(f"{source} has no model_version column; is it a batch table?")
        if "model_name" in recent.columns:
            recent = recent[recent["model_name"].astype(str) == request.model_name]
        if recent.empty:
            raise LifecycleError(f"{source} has no rows of {request.model_name} in {window}")
        rows: List[Dict[str, Any]] = []
        verdicts: List[drift.DriftReport] = []
        inputs: List[Dict[str, Any]] = []  # what the pictures are drawn from, per version
        computed_at = datetime.now(timezone.utc).replace(tzinfo=None)
        work = Path(tempfile.mkdtemp(prefix="dai-mlflow-monitor-"))
        try:
            for version in sorted(recent["model_version"].astype(str).unique(), key=_version_key):
                ref = registry.ModelVersionRef(request.model_name, version, "")
                base = version_baselines(ref, work)
                part = recent[recent["model_version"].astype(str) == version]
                verdict = drift.drift_report(
                    base["stats"], base["features"], base["outputs"], part,
                    base["prediction_baseline"],
                )  # fmt: skip
                verdicts.append(verdict)
                inputs.append({"version": version, "report": verdict, "rows": part, **base})
                for r in verdict.rows:
                    rows.append(
                        {
                            "model_name": request.model_name,
                            "model_version": version,
                            **asdict(r),
                            "n_rows": verdict.n_rows,
                            "window_start": window[0],
                            "window_end": window[-1],
                            "status": verdict.status,
                            "should_retrain": verdict.should_retrain,
                            "run_id": run.info.run_id,
                            "computed_at": computed_at,
                        }
                    )
                say(
                    f"v{version}: {verdict.n_rows} rows, drifted features "
                    f"{verdict.drifted_features or 'none'}, drifted predictions "
                    f"{verdict.drifted_predictions or 'none'}, should_retrain="
                    f"{str(verdict.should_retrain).lower()} ({verdict.status})"
                )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        frame = pd.DataFrame(rows, columns=list(MONITOR_COLUMNS))
        retrain = any(v.should_retrain for v in verdicts)
        mlflow.log_metrics(
            {
                "should_retrain": float(retrain),
                "rows": float(sum(v.n_rows for v in verdicts)),
                "drifted_features": float(sum(len(v.drifted_features) for v in verdicts)),
                "drifted_predictions": float(sum(len(v.drifted_predictions) for v in verdicts)),
            }
        )
        with tempfile.TemporaryDirectory(prefix="dai-mlflow-drift-") as tmp:
            report_csv = Path(tmp) / "drift.csv"
            frame.to_csv(report_csv, index=False)
            mlflow.log_artifact(str(report_csv))
        reasons = [f"v{i['version']}: {drift.verdict_reason(i['report'])}" for i in inputs]
        mlflow.set_tags(
            {
                registry.TAG_PREFIX + "should_retrain": str(retrain).lower(),
                registry.TAG_PREFIX + "should_retrain_reason": "; ".join(reasons)[:5000],
            }
        )
        partition = tables.write_frame(
            out_table,
            day,
            frame,
            kind=MONITOR_TABLE,
            overwrite=request.overwrite,
            inputs=[str(source)],
        )
        log_report(request.model_name, window, run.info.run_id, computed_at, inputs)
        return MonitorResult(run.info.run_id, retrain, partition, frame)


def version_pictures(item: Dict[str, Any]) -> report.VersionDrift:
    """The pictures of one version's window: scores, predictions, top features."""
    version, result, recent = item["version"], item["report"], item["rows"]
    prefix = f"v{version}/"
    features = {}
    for i, row in enumerate(report.top_features(result.rows)):
        name = f"{prefix}feature_{i + 1:02d}_{plots.safe_name(row.column)}.png"
        entry = item["stats"].get(row.column)
        features[row.column] = plots.feature_picture(entry, row, recent[row.column], name)
    return report.VersionDrift(
        version=version,
        report=result,
        reason=drift.verdict_reason(result),
        scores_picture=plots.drift_scores_picture(result.rows, prefix + "drift_scores.png"),
        prediction_picture=plots.prediction_picture(
            item["prediction_baseline"],
            item["outputs"],
            recent,
            result.rows,
            prefix + "predictions.png",
        ),  # fmt: skip
        feature_pictures=features,
    )


def log_report(
    model_name: str,
    window: List[str],
    run_id: str,
    computed_at: datetime,
    inputs: List[Dict[str, Any]],
) -> bool:
    """Log ``plots/v<version>/*.png`` and ``drift_report.html``; True when logged.

    Best effort: anything raised becomes a warning (stderr, run tag ``dai_mlflow.plots_error``).
    """

    def make() -> Tuple[str, str, List[plots.Picture]]:
        versions = [version_pictures(item) for item in inputs]
        stamp = computed_at.strftime("%Y-%m-%d %H:%M UTC")
        page = report.drift_report(model_name, window, run_id, stamp, versions)
        return report.DRIFT_REPORT_NAME, page, report.all_pictures(versions)

    return log_page("drift report", make)


def _version_key(version: str) -> Any:
    return (0, int(version)) if version.isdigit() else (1, version)


def summary(result: Optional[MonitorResult]) -> str:
    """The last stdout line of the entry point."""
    return f"should_retrain={'true' if result and result.should_retrain else 'false'}"
