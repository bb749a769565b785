"""Drift monitoring: ``mlflow run . -e monitor -P model_name=NAME -P table=DIR -P output=DIR``.

:func:`monitor` compares the batch table's window, per model version, with the version's training
and validation baselines (:mod:`.drift`), replaces the monitoring table's ``date`` partition
(:mod:`.tables`) and logs the verdict, then the report (:mod:`.reports`, best effort). What is
compared and written: docs/lifecycle.md. Pure pandas/numpy (no Spark); Python 3.8-safe.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import date as Date
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

import pandas as pd

from dai_mlflow.errors import say
from dai_mlflow.lifecycle import drift, registry, tables
from dai_mlflow.lifecycle.errors import LifecycleError
from dai_mlflow.lifecycle.reports.publish import log_drift_report
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
    run_id = registry.version_tag(ref, registry.BASELINE_RUN_TAG)
    baseline = None
    if run_id:
        baseline = registry.read_run_file(run_id, registry.PREDICTION_BASELINE_FILE, _read_json)
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
        log_drift_report(request.model_name, window, run.info.run_id, computed_at, inputs)
        return MonitorResult(run.info.run_id, retrain, partition, frame)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _version_key(version: str) -> Any:
    return (0, int(version)) if version.isdigit() else (1, version)


def summary(result: Optional[MonitorResult]) -> str:
    """The last stdout line of the entry point."""
    return f"should_retrain={'true' if result and result.should_retrain else 'false'}"
