"""The one-page HTML reports of ``validate`` and ``monitor``, self-contained and offline.

PNGs embedded as ``data:`` URIs, inline CSS, no script or fetched resource, every text
HTML-escaped: a report opens the same from the MLflow UI, a mail or a machine offline
(docs/lifecycle.md, "Pictures"). Stdlib only; Python 3.8-safe.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from typing import Any, Iterable, List, Mapping, Optional, Sequence

from dai_mlflow.lifecycle import drift
from dai_mlflow.lifecycle.metrics import Decision
from dai_mlflow.lifecycle.reports.plots import Picture

VALIDATION_REPORT_NAME = "validation_report.html"
DRIFT_REPORT_NAME = "drift_report.html"
PLOTS_DIR = "plots"
TOP_FEATURES = 12

_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1180px;color:#222;background:#fff;font-size:14px;line-height:1.4}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}.meta{color:#666;font-size:12px}
.verdict{padding:10px 14px;border-radius:6px;margin:12px 0;font-size:15px}
.good{background:#e7f5e9;border:1px solid #7bbf86}.bad{background:#fdecea;border:1px solid #e0827a}
.neutral{background:#eef3fb;border:1px solid #8aa8d8}
table{border-collapse:collapse;margin:8px 0;font-size:12px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr.drifted td{background:#fdecea}
.grid{display:flex;flex-wrap:wrap;gap:10px}.grid figure{margin:0}
figure{margin:8px 0}figcaption{font-size:11px;color:#666}img{max-width:100%;height:auto}
"""


def data_uri(picture: Picture) -> str:
    """The PNG as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(picture.png).decode("ascii")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _img(picture: Picture, width: Optional[int] = None) -> str:
    style = f' style="width:{width}px"' if width else ""
    return (
        f'<figure><img alt="{_e(picture.title)}" src="{data_uri(picture)}"{style}>'
        f"<figcaption>{_e(picture.title)} ({_e(PLOTS_DIR + '/' + picture.name)})</figcaption>"
        "</figure>"
    )


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return _e(value)
    if isinstance(value, (int, float)):
        return "n/a" if isinstance(value, float) and math.isnan(value) else f"{value:.4g}"
    return _e(value)


def _cell(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="num">{_num(value)}</td>'
    return f"<td>{_e(value)}</td>"


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], classes: Iterable[str] = ()
) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row, cls in zip(rows, list(classes) or _forever("")):
        cells = "".join(_cell(v) for v in row)
        attr = f' class="{cls}"' if cls else ""
        body.append(f"<tr{attr}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _forever(value: str) -> Iterable[str]:
    while True:
        yield value


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n"
    )


# ------------------------------------------------------------------------------ validate
@dataclass(frozen=True)
class ValidationSummary:
    """What :func:`validation_report` shows (all plain values, nothing secret)."""

    model_name: str
    run_id: str
    decision: Decision
    reason: str
    problem: str
    target: str
    primary_metric: str
    holdout: str
    rows: int
    metrics: Mapping[str, Mapping[str, float]]  # model label -> metric -> value
    computed_at: str


def validation_report(summary: ValidationSummary, pictures: Sequence[Picture]) -> str:
    """``validation_report.html``: decision, metrics and curves on one page."""
    decision = Decision(summary.decision)
    css = "good" if decision.promotes else ("neutral" if decision is Decision.ALREADY else "bad")
    names = sorted({m for scores in summary.metrics.values() for m in scores})
    rows = [[label, *[scores.get(m, float("nan")) for m in names]]
            for label, scores in summary.metrics.items()]  # fmt: skip
    body = [
        f"<h1>Validation of {_e(summary.model_name)}</h1>",
        f'<div class="meta">run {_e(summary.run_id)} · {_e(summary.computed_at)} · holdout '
        f"{_e(summary.holdout)} ({summary.rows} rows) · {_e(summary.problem)}, target "
        f"{_e(summary.target)}</div>",
        f'<div class="verdict {css}"><b>decision: {_e(summary.decision)}</b> - '
        f"{_e(summary.reason)}</div>",
        f"<h2>Metrics</h2><p>The gate compares <b>{_e(summary.primary_metric)}</b>.</p>",
        _table(["model", *names], rows),
        "<h2>Curves</h2>",
        '<div class="grid">' + "".join(_img(p, 540) for p in pictures) + "</div>",
    ]
    return _page(f"Validation of {summary.model_name}", "\n".join(body))


# ------------------------------------------------------------------------------ monitor
@dataclass(frozen=True)
class VersionDrift:
    """One model version's part of :func:`drift_report`."""

    version: str
    report: drift.DriftReport
    reason: str
    scores_picture: Optional[Picture]
    prediction_picture: Optional[Picture]
    feature_pictures: Mapping[str, Picture]  # column -> chart (the top features only)


def top_features(rows: Sequence[drift.DriftRow], n: int = TOP_FEATURES) -> List[drift.DriftRow]:
    """The ``n`` feature rows with the highest drift score (drifted ones first)."""
    features = [r for r in rows if r.kind == "feature"]

    def key(r: drift.DriftRow) -> Any:
        score = drift.drift_score(r)
        return (not r.drifted, -(0.0 if math.isnan(score) else score), r.column)

    return sorted(features, key=key)[:n]


def drift_report(
    model_name: str,
    window: Sequence[str],
    run_id: str,
    computed_at: str,
    versions: Sequence[VersionDrift],
) -> str:
    """``drift_report.html``: the verdict and reason, then the charts and the full table, per
    model version that scored rows in the window."""
    retrain = any(v.report.should_retrain for v in versions)
    body = [
        f"<h1>Drift of {_e(model_name)}</h1>",
        f'<div class="meta">window {_e(window[0])} .. {_e(window[-1])} · run {_e(run_id)} · '
        f"{_e(computed_at)}</div>",
        f'<div class="verdict {"bad" if retrain else "good"}"><b>should_retrain='
        f"{str(retrain).lower()}</b></div>",
    ]
    for v in versions:
        body.append(_version_section(v))
    return _page(f"Drift of {model_name}", "\n".join(body))


def _version_section(v: VersionDrift) -> str:
    r = v.report
    features = [x for x in r.rows if x.kind == "feature"]
    out = [
        f"<h2>Version {_e(v.version)}: {r.n_rows} rows</h2>",
        f'<div class="verdict {"bad" if r.should_retrain else "good"}"><b>should_retrain='
        f"{str(r.should_retrain).lower()}</b> - {_e(v.reason)}</div>",
    ]
    if v.prediction_picture is not None:
        out += ["<h3>Predictions against the validation baseline</h3>", _img(v.prediction_picture)]
    charted = [x for x in top_features(r.rows) if x.column in v.feature_pictures]
    if charted:
        if len(charted) < len(features):
            out.append(f"<h3>The {len(charted)} most drifted of {len(features)} features</h3>")
        else:
            out.append(f"<h3>All {len(features)} features, most drifted first</h3>")
        grid = "".join(_img(v.feature_pictures[x.column], 560) for x in charted)
        out.append(f'<div class="grid">{grid}</div>')
    if v.scores_picture is not None:
        out += ["<h3>Drift score of every feature</h3>", _img(v.scores_picture)]
    out.append(f"<h3>All {len(r.rows)} checks</h3>")
    ordered = sorted(r.rows, key=lambda x: (x.kind != "prediction", -_score(x), x.column))
    rows = [
        [x.kind, x.column, x.metric, x.value, x.threshold, _score(x), x.drifted,
         x.baseline_missing_rate, x.recent_missing_rate, x.baseline_source,
         "chart above" if x.column in v.feature_pictures else x.note]
        for x in ordered
    ]  # fmt: skip
    headers = ["kind", "column", "metric", "value", "threshold", "score", "drifted",
               "training missing", "window missing", "baseline", "note"]  # fmt: skip
    out.append(_table(headers, rows, ["drifted" if x.drifted else "" for x in ordered]))
    return "\n".join(out)


def _score(row: drift.DriftRow) -> float:
    score = drift.drift_score(row)
    return 0.0 if math.isnan(score) else score


def all_pictures(versions: Sequence[VersionDrift]) -> List[Picture]:
    """Every picture of a drift report (their names are paths under ``plots/``)."""
    out: List[Picture] = []
    for v in versions:
        for p in (v.scores_picture, v.prediction_picture, *v.feature_pictures.values()):
            if p is not None:
                out.append(p)
    return out
