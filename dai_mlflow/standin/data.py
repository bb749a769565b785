"""Synthetic, telecom-churn-like training data with DAI-awkward column names.

Generated from the stdlib's seeded ``random.Random`` (only ``random()`` and ``gauss()``), so the
same seed gives the same rows on every Python and numpy version. Columns mix integers, reals and
categorical text, have missing values, and names with spaces, ``?``, quotes, dots and a leading
digit. Values are rounded when generated, so CSV text and parsed numbers agree exactly.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

# (name, DAI data type, share missing)
INPUT_COLUMNS = (
    ("Account Length", "int", 0.03),
    ("Day Mins", "real", 0.05),
    ("Intl Charge?", "real", 0.04),
    ("Cust Serv Calls", "int", 0.0),
    ("Int'l Plan", "str", 0.02),
    ('Plan "Tier"', "str", 0.03),
    ("State.Code", "str", 0.04),
    ("2nd Reading", "real", 0.05),
    ("x1", "real", 0.05),
)
STATES = ("AK", "CA", "CO", "FL", "GA", "IL", "MA", "MI", "NJ", "NY", "OH", "OR", "TX", "VA", "WA")
_STATE_EFFECT = {s: (i % 5 - 2) * 0.35 for i, s in enumerate(STATES)}
TIERS = ("Basic", "Plus", "Premium")
_TIER_EFFECT = {"Basic": -0.4, "Plus": 0.1, "Premium": 0.5}
TARGETS = {"regression": "Total Charge", "binary": "Churn?", "multiclass": "cool_cond_y"}
LABELS = {"binary": ("False.", "True."), "multiclass": ("3", "20", "100")}


@dataclass(frozen=True)
class Dataset:
    """Rows of input values (None = missing) and their labels."""

    columns: Sequence[str]
    data_types: Sequence[str]
    rows: List[List[Any]]
    target: str
    labels: List[Any]


def _maybe(rng: random.Random, share: float, value: Any) -> Optional[Any]:
    return None if share and rng.random() < share else value


def generate(problem: str, n_rows: int, seed: int) -> Dataset:
    """``n_rows`` rows for ``problem`` (regression, binary or multiclass)."""
    rng = random.Random(seed)
    rows, labels = [], []
    for _ in range(n_rows):
        length = 1 + int(rng.random() * 240)
        day = round(rng.gauss(180.0, 50.0), 1)
        intl = round(max(0.0, rng.gauss(2.8, 0.75)), 2)
        calls = min(9, int(-math.log(1.0 - rng.random()) * 1.6))
        plan = "yes" if rng.random() < 0.12 else "no"
        tier = TIERS[min(2, int(rng.random() * 3))]
        state = STATES[min(len(STATES) - 1, int(rng.random() * len(STATES)))]
        second = round(rng.gauss(0.0, 1.0), 4)
        x1 = round(rng.random() * 6.0 - 3.0, 4)
        latent = (
            0.012 * (day - 180.0)
            + 0.9 * (plan == "yes")
            + 0.35 * (calls - 1.5)
            + _STATE_EFFECT[state]
            + _TIER_EFFECT[tier]
            + 0.5 * x1
            - 0.3 * second
            + 0.002 * (length - 120)
            + 0.4 * (intl - 2.8)
        )
        values = [length, day, intl, calls, plan, tier, state, second, x1]
        rows.append([_maybe(rng, share, v) for (_, _, share), v in zip(INPUT_COLUMNS, values)])
        labels.append(_label(rng, problem, latent, day, intl))
    return Dataset(
        columns=[c[0] for c in INPUT_COLUMNS],
        data_types=[c[1] for c in INPUT_COLUMNS],
        rows=rows,
        target=TARGETS[problem],
        labels=labels,
    )


def _label(rng: random.Random, problem: str, latent: float, day: float, intl: float) -> Any:
    if problem == "regression":
        return round(20.0 + 0.17 * day + 2.7 * intl + 4.0 * latent + rng.gauss(0.0, 2.0), 2)
    if problem == "binary":
        p = 1.0 / (1.0 + math.exp(-(1.6 * latent - 1.3)))
        return LABELS["binary"][1] if rng.random() < p else LABELS["binary"][0]
    scores = [0.0, 1.4 * latent, -1.1 * latent + 0.01 * (day - 180.0)]
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    u = rng.random() * sum(weights)
    for label, w in zip(LABELS["multiclass"], weights):
        u -= w
        if u <= 0:
            return int(label)
    return int(LABELS["multiclass"][-1])


def format_value(value: Any) -> str:
    """CSV text of a value: empty for missing, shortest round-trip text for floats."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write rows as CSV with ``\\n`` line ends (byte-identical for equal input)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow([format_value(v) for v in row])


# What a drifted scoring window moves (monitor's tests and report pictures): three numbers up,
# and every present ``Int'l Plan`` to "yes".
DRIFT_SHIFTS = {"Day Mins": 110.0, "Cust Serv Calls": 3, "x1": 2.0}


def write_window(path: Path, seed: int, shift: bool, n_rows: int = 600) -> Path:
    """New input rows of the binary problem as CSV, drifted by :data:`DRIFT_SHIFTS` when
    ``shift``; ``path``."""
    dataset = generate("binary", n_rows, seed)
    index = {name: i for i, name in enumerate(dataset.columns)}
    rows = [list(row) for row in dataset.rows]
    if shift:
        for row in rows:
            for name, delta in DRIFT_SHIFTS.items():
                if row[index[name]] is not None:
                    row[index[name]] += delta
            if row[index["Int'l Plan"]] is not None:
                row[index["Int'l Plan"]] = "yes"
    write_csv(path, dataset.columns, rows)
    return path


def column_stats(dataset: Dataset, n_sample: int = 10) -> Dict[str, Dict[str, Any]]:
    """Per input column: DAI data type, sample data, and summary statistics (for drift)."""
    stats: Dict[str, Dict[str, Any]] = {}
    for j, (name, dtype) in enumerate(zip(dataset.columns, dataset.data_types)):
        values = [row[j] for row in dataset.rows]
        present = [v for v in values if v is not None]
        entry: Dict[str, Any] = {
            "data_type": dtype,
            "data": present[:n_sample],
            "count": len(values),
            "missing": len(values) - len(present),
        }
        if dtype in ("real", "int"):
            mean = math.fsum(present) / len(present)
            var = math.fsum((v - mean) ** 2 for v in present) / max(1, len(present) - 1)
            entry.update(
                min=min(present),
                max=max(present),
                mean=round(mean, 10),
                std=round(math.sqrt(var), 10),
            )
        else:
            counts: Dict[str, int] = {}
            for v in present:
                counts[v] = counts.get(v, 0) + 1
            entry["levels"] = dict(sorted(counts.items()))
        stats[name] = entry
    return stats
