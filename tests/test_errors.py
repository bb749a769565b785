"""One error line everywhere: dai_mlflow.errors and its stdlib-only twin in the hooks wheel."""

from __future__ import annotations

import pytest

from dai_mlflow.errors import one_line, report_error
from dai_mlflow.model.hooks.stdin_server import describe


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bad\nsecond line"),
        RuntimeError(""),
        KeyError("column"),
        OSError("  \n  disk full  \n"),
    ],
)
def test_the_hooks_wheel_describes_an_error_as_the_package_does(error: BaseException) -> None:
    assert describe(error) == one_line(error)
    assert "\n" not in one_line(error)


def test_report_error_prints_one_line(capsys: pytest.CaptureFixture) -> None:
    assert report_error("first\nsecond") == 1
    assert capsys.readouterr().err == "Error: first second\n"
