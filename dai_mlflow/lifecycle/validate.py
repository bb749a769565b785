"""The champion/challenger gate: ``mlflow run . -e validate -P model_name=NAME -P holdout=PATH``.

:func:`validate` scores ``@challenger`` and ``@champion`` on the holdout in each model's own env,
logs metrics, baselines and the validation sample, and only then (last step, only if
``champion`` has not moved) promotes a strictly better challenger; the report is best effort.
A failure before the alias step leaves every alias as it was. The rule and what is logged:
docs/lifecycle.md ("Promotion rule"). Python 3.8-safe: runs in the project env.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Optional

import pandas as pd

from dai_mlflow.errors import say
from dai_mlflow.lifecycle import drift, metrics, registry, scoring
from dai_mlflow.lifecycle.deploy import smoke
from dai_mlflow.lifecycle.errors import LifecycleError
from dai_mlflow.lifecycle.metrics import Decision
from dai_mlflow.lifecycle.reports.page import ValidationSummary
from dai_mlflow.lifecycle.reports.publish import log_validation_report
from dai_mlflow.tracking import CHALLENGER, CHAMPION


@dataclass(frozen=True)
class ValidateRequest(registry.ModelRequest):
    """Inputs of :func:`validate`."""

    holdout: Path
    target: Optional[str] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        scoring.data_format(self.holdout)


@dataclass(frozen=True)
class ValidateResult:
    """What the gate decided and on which numbers."""

    run_id: str
    decision: Decision
    champion_version: str
    challenger_version: str
    previous_champion: Optional[str]
    primary_metric: str
    challenger_metrics: Dict[str, float]
    champion_metrics: Dict[str, float]


def validate(request: ValidateRequest) -> ValidateResult:
    """Score challenger and champion on the holdout; promote the challenger only if better.

    Raises:
        DaiMlflowError: any expected failure (one line); no alias was moved and the run ends
            FAILED.
    """
    import mlflow

    with mlflow.start_run() as run:
        return _validate(request, run.info.run_id)


def _validate(request: ValidateRequest, run_id: str) -> ValidateResult:
    import mlflow

    name = request.model_name
    registry.log_params_once({"model_name": name, "holdout": str(request.holdout)})
    challenger = registry.require_alias(name, CHALLENGER)
    champion = registry.version_by_alias(name, CHAMPION)
    registry.log_params_once(
        {
            "challenger_version": challenger.version,
            "champion_version": champion.version if champion else "none",
        }
    )
    say(
        f"{name}: challenger v{challenger.version}, champion "
        f"{'v' + champion.version if champion else '(none yet)'}; scoring {request.holdout}"
    )
    holdout = scoring.read_frame(request.holdout)
    work = Path(tempfile.mkdtemp(prefix="dai-mlflow-validate-"))
    try:
        new_dir = registry.download(challenger, work / "challenger")
        outputs = drift.signature_names(new_dir, outputs=True)
        problem = metrics.detect_problem(outputs, list(holdout.columns), request.target)
        labels = list(holdout[problem.target])
        new_pred = scoring.score_file(new_dir, request.holdout, label=challenger.uri)
        new_metrics = metrics.compute_metrics(problem, labels, new_pred)
        old_metrics: Dict[str, float] = {}
        old_pred: Optional[pd.DataFrame] = None
        if champion is not None and champion.version != challenger.version:
            old_dir = registry.download(champion, work / "champion")
            old_outputs = drift.signature_names(old_dir, outputs=True)
            if tuple(old_outputs) != tuple(outputs):
                raise LifecycleError(
                    f"champion v{champion.version} outputs {old_outputs} but challenger "
                    f"v{challenger.version} outputs {outputs}; they do not predict the same thing"
                )
            old_pred = scoring.score_file(old_dir, request.holdout, label=champion.uri)
            old_metrics = metrics.compute_metrics(problem, labels, old_pred)
        baseline = drift.prediction_baseline(new_pred, problem.output_columns)
        (work / registry.PREDICTION_BASELINE_FILE).write_text(json.dumps(baseline, indent=1))
        sample = smoke.build_sample(new_dir, holdout, new_pred, f"validation run {run_id}")
        smoke.write_sample(sample, work / smoke.SAMPLE_FILE)
    except Exception:
        shutil.rmtree(work, ignore_errors=True)
        raise

    try:
        mlflow.log_metrics({f"challenger_{k}": v for k, v in new_metrics.items()})
        if old_metrics:
            mlflow.log_metrics({f"champion_{k}": v for k, v in old_metrics.items()})
        mlflow.log_artifact(str(work / registry.PREDICTION_BASELINE_FILE))
        mlflow.log_artifact(str(work / smoke.SAMPLE_FILE))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    primary, _ = metrics.PRIMARY[problem.kind]
    if champion is None:
        decision = Decision.FIRST
    elif champion.version == challenger.version:
        decision = Decision.ALREADY
    elif metrics.is_better(problem, new_metrics, old_metrics):
        decision = Decision.PROMOTED
    else:
        decision = Decision.KEPT
    reason = _reason(decision, primary, challenger.version, new_metrics, champion, old_metrics)
    mlflow.set_tags(
        {
            registry.TAG_PREFIX + "decision": decision.value,
            registry.TAG_PREFIX + "decision_reason": reason,
            registry.TAG_PREFIX + "problem": problem.kind,
            registry.TAG_PREFIX + "primary_metric": primary,
        }
    )
    registry.set_version_tag(challenger, registry.BASELINE_RUN_TAG, run_id)
    if decision.promotes:
        # Last step: everything above succeeded, and the alias is moved only if unchanged.
        registry.move_alias(
            name,
            CHAMPION,
            challenger.version,
            expected=champion.version if champion else None,
        )
    winner = champion.version if decision is Decision.KEPT and champion else challenger.version
    scores = {f"challenger v{challenger.version}": new_metrics}
    preds = {f"challenger v{challenger.version}": new_pred}
    if old_pred is not None and champion is not None:
        scores[f"champion v{champion.version}"] = old_metrics
        preds[f"champion v{champion.version}"] = old_pred
    summary = ValidationSummary(
        model_name=name, run_id=run_id, decision=decision, reason=reason, problem=problem.kind,
        target=problem.target, primary_metric=primary, holdout=str(request.holdout),
        rows=len(labels), metrics=scores,
        computed_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )  # fmt: skip
    log_validation_report(summary, problem, labels, preds)
    say(
        f"{decision}: {primary} challenger={new_metrics[primary]:.6g}"
        + (f" champion={old_metrics[primary]:.6g}" if old_metrics else "")
        + f"; {name}@champion = v{winner}"
    )
    return ValidateResult(
        run_id=run_id,
        decision=decision,
        champion_version=str(winner),
        challenger_version=challenger.version,
        previous_champion=champion.version if champion else None,
        primary_metric=primary,
        challenger_metrics=new_metrics,
        champion_metrics=old_metrics,
    )


def _reason(
    decision: Decision,
    primary: str,
    challenger_version: str,
    new: Dict[str, float],
    champion: Optional[registry.ModelVersionRef],
    old: Dict[str, float],
) -> str:
    if decision is Decision.FIRST:
        return f"no champion yet: challenger v{challenger_version} becomes champion"
    if decision is Decision.ALREADY:
        return f"challenger v{challenger_version} is already the champion"
    assert champion is not None
    relation = "better than" if decision is Decision.PROMOTED else "not better than"
    return (
        f"challenger v{challenger_version} {primary} {new[primary]:.6g} is {relation} champion "
        f"v{champion.version} {primary} {old[primary]:.6g}"
    )
