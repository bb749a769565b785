"""The deploy smoke test's comparison of a server's answers with the validated predictions.

No server: the HTTP call (``smoke.http_request``) answers what each test gives it, as the
model server would write it. What a real served model answers is in test_deploy.py.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional

import pytest

from dai_mlflow.lifecycle.deploy import smoke
from dai_mlflow.lifecycle.errors import SmokeTestError

URL = "http://127.0.0.1:5000"
VALIDATED = [[0.9, 0.1], [0.25, 0.75], [0.5, 0.5]]


def _sample(predictions: Optional[List[List[float]]] = VALIDATED) -> smoke.Sample:
    data: List[List[Any]] = [[1.0, "a"], [2.0, "b"], [3.0, None]]
    return smoke.Sample(["x", "plan"], data, ["y.0", "y.1"], predictions, "validation run r1")


@pytest.fixture
def server(monkeypatch) -> Dict[str, Any]:
    """What the stand-in server got (``sent``) and will answer (``answer``: text or a value)."""
    seen: Dict[str, Any] = {"answer": None, "sent": []}

    def _http_request(url, body=None, headers=None, timeout=10.0):
        seen["sent"].append((url, json.loads(body)))
        answer = seen["answer"]
        text = answer if isinstance(answer, str) else json.dumps(answer)
        return 200, text.encode("utf-8")

    monkeypatch.setattr(smoke, "http_request", _http_request)
    return seen


def _plain(message: str) -> str:
    """The message with numpy 2's scalar reprs (``np.float64(0.75)``) read as plain numbers."""
    return re.sub(r"np\.float64\(([^)]*)\)", r"\1", message)


def _invocations(rows: List[List[float]]) -> Dict[str, Any]:
    """``mlflow models serve``'s answer: one record per row, keyed by output column."""
    return {"predictions": [{"y.0": a, "y.1": b} for a, b in rows]}


def test_the_validated_answers_pass_and_the_sample_is_what_is_sent(server):
    server["answer"] = _invocations(VALIDATED)
    smoke.check_invocations(URL + "/", _sample())
    ((url, body),) = server["sent"]
    assert url == f"{URL}/invocations"
    assert body == {"dataframe_split": {"columns": ["x", "plan"], "data": _sample().data}}
    server["answer"] = {"jsonrpc": "2.0", "id": 1, "result": VALIDATED}
    smoke.check_rpc(URL, _sample())
    url, body = server["sent"][-1]
    assert url == f"{URL}/rpc"
    assert body["method"] == "score_batch"
    assert body["params"]["rows"][2] == {"x": 3.0, "plan": None}


def test_answers_within_the_tolerance_pass_and_one_beyond_it_fails(server):
    tol = smoke.TOLERANCE
    close = [[a + 0.5 * tol, b - 0.5 * tol] for a, b in VALIDATED]
    server["answer"] = _invocations(close)
    smoke.check_invocations(URL, _sample())
    # Relative to the value when it is over 1 (a regression output): 1000 +- 5e-4 is close.
    big = smoke.Sample(["x", "plan"], _sample().data, ["charge"], [[1000.0]] * 3, "validation")
    server["answer"] = {"result": [[1000.0 + 0.5 * tol * 1000]] * 3}
    smoke.check_rpc(URL, big)
    server["answer"] = {"result": [[1000.0 + 2 * tol * 1000]] * 3}
    with pytest.raises(SmokeTestError, match="answered 3 values unlike"):
        smoke.check_rpc(URL, big)
    off = [row[:] for row in VALIDATED]
    off[1][1] += 3 * tol
    server["answer"] = _invocations(off)
    with pytest.raises(SmokeTestError) as err:
        smoke.check_invocations(URL, _sample())
    assert _plain(str(err.value)) == (
        f"{URL}/invocations answered 1 values unlike the validated predictions "
        f"(validation run r1); first: row 1 y.1 = {off[1][1]!r}, validated 0.75"
    )


def test_a_differing_row_is_named_with_its_first_differing_value(server):
    wrong = [VALIDATED[0], [0.75, 0.25], VALIDATED[2]]  # row 1 swapped: still probabilities
    server["answer"] = {"jsonrpc": "2.0", "id": 1, "result": wrong}
    with pytest.raises(SmokeTestError) as err:
        smoke.check_rpc(URL, _sample())
    assert _plain(str(err.value)) == (
        f"{URL}/rpc answered 2 values unlike the validated predictions (validation run r1); "
        "first: row 1 y.0 = 0.75, validated 0.25"
    )


def test_nan_answers_fail_even_when_nothing_was_validated(server):
    # MLflow writes NaN as a bare NaN (not JSON, read by Python's json).
    server["answer"] = '{"predictions": [[0.9, 0.1], [NaN, NaN], [0.5, 0.5]]}'
    for sample in (_sample(), _sample(predictions=None)):
        with pytest.raises(SmokeTestError) as err:
            smoke.check_invocations(URL, sample)
        assert str(err.value) == (
            f"{URL}/invocations answered 2 of 6 values that are not finite numbers"
        )


def test_answers_of_the_wrong_shape_or_range_fail_and_unvalidated_ones_pass(server):
    server["answer"] = _invocations(VALIDATED[:2])
    with pytest.raises(SmokeTestError) as err:
        smoke.check_invocations(URL, _sample())
    assert str(err.value) == f"{URL}/invocations answered 2 rows x 2 values for 3 rows x 2 outputs"
    server["answer"] = _invocations([[1.2, -0.2]] * 3)
    with pytest.raises(SmokeTestError, match=r"class probabilities outside \[0, 1\]"):
        smoke.check_invocations(URL, _sample(predictions=None))
    # Not validated (the model's input example): any finite probabilities pass.
    server["answer"] = _invocations([[0.3, 0.7]] * 3)
    smoke.check_invocations(URL, _sample(predictions=None))
    with pytest.raises(SmokeTestError, match="answered 6 values unlike"):
        smoke.check_invocations(URL, _sample())
