"""Log a report page and its pictures to the active run, best effort: a failure is a warning
(stderr and the run tag ``dai_mlflow.plots_error``) and never changes a decision or a table.

Python 3.8-safe: runs in the project env.
"""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pandas as pd

from dai_mlflow.errors import say
from dai_mlflow.lifecycle import drift, metrics, registry
from dai_mlflow.lifecycle.reports import page, plots


def log_validation_report(
    summary: page.ValidationSummary,
    problem: metrics.Problem,
    labels: List[object],
    predictions: Dict[str, pd.DataFrame],
) -> bool:
    """Log ``plots/*.png`` and ``validation_report.html`` to the active run; True when logged.

    Best effort by design: anything raised while drawing or logging becomes a warning on stderr
    and the run tag ``dai_mlflow.plots_error``, so a picture can never change a promotion.
    """

    def make() -> Tuple[str, str, List[plots.Picture]]:
        pictures = plots.validation_pictures(problem, labels, predictions, summary.metrics)
        return page.VALIDATION_REPORT_NAME, page.validation_report(summary, pictures), pictures

    return log_page("validation report", make)


def version_pictures(item: Dict[str, Any]) -> page.VersionDrift:
    """The pictures of one version's window: scores, predictions, top features."""
    version, result, recent = item["version"], item["report"], item["rows"]
    prefix = f"v{version}/"
    features = {}
    for i, row in enumerate(page.top_features(result.rows)):
        name = f"{prefix}feature_{i + 1:02d}_{plots.safe_name(row.column)}.png"
        entry = item["stats"].get(row.column)
        features[row.column] = plots.feature_picture(entry, row, recent[row.column], name)
    return page.VersionDrift(
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


def log_drift_report(
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
        html = page.drift_report(model_name, window, run_id, stamp, versions)
        return page.DRIFT_REPORT_NAME, html, page.all_pictures(versions)

    return log_page("drift report", make)


def log_page(what: str, make: Callable[[], Tuple[str, str, List[plots.Picture]]]) -> bool:
    """Log the page ``make()`` draws and its pictures (under ``plots/``) in one call; True if so.

    ``make`` returns (page file name, HTML, pictures). Anything raised while drawing or logging
    becomes :func:`warn_plots_failed` and False: a picture never changes a decision.
    """
    import mlflow

    try:
        name, html, pictures = make()
        with tempfile.TemporaryDirectory(prefix="dai-mlflow-report-") as tmp:
            folder = Path(tmp)
            for p in pictures:
                path = folder / page.PLOTS_DIR / p.name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(p.png)
            (folder / name).write_text(html, encoding="utf-8")
            mlflow.log_artifacts(tmp)  # one call: the report and its plots, or neither
    except Exception as e:  # pictures are best effort
        warn_plots_failed(what, e)
        return False
    return True


def warn_plots_failed(what: str, error: BaseException) -> None:
    """Say on stderr and in the run tag ``dai_mlflow.plots_error`` that pictures were skipped."""
    import mlflow

    text = " ".join(f"{type(error).__name__}: {error}".split())[:500]
    say(f"warning: {what} not made ({text}); the results above stand")
    try:
        mlflow.set_tag(registry.TAG_PREFIX + "plots_error", f"{what}: {text}")
    except Exception as e:  # the tag is a courtesy; the warning line was already printed
        say(f"warning: could not tag the run with the plot error: {e}")
