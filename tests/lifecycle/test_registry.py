"""``registry.move_alias``: an alias moves only from where the caller saw it.

A fake registry client stands in for MLflow's (``registry.client``), answering as
``MlflowClient`` does (``RESOURCE_DOES_NOT_EXIST`` for a missing model or alias); no store.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from dai_mlflow.lifecycle import registry
from dai_mlflow.lifecycle.errors import LifecycleError

NAME = "churn"


class FakeVersion:
    def __init__(self, version: str) -> None:
        self.version = version
        self.run_id = f"run-{version}"


class FakeClient:
    """One registered model's aliases; ``fail_writes`` makes setting an alias fail."""

    def __init__(self, aliases: Dict[str, str]) -> None:
        self.aliases = dict(aliases)
        self.writes: List[Tuple[str, str, str]] = []
        self.fail_writes = False

    def get_registered_model(self, name: str) -> object:
        if name != NAME:
            raise MlflowException(f"Registered Model with name={name} not found",
                                  error_code=RESOURCE_DOES_NOT_EXIST)  # fmt: skip
        return object()

    def get_model_version_by_alias(self, name: str, alias: str) -> FakeVersion:
        version = self.aliases.get(alias)
        if version is None:
            raise MlflowException(f"Registered model alias {alias} not found.",
                                  error_code=RESOURCE_DOES_NOT_EXIST)  # fmt: skip
        return FakeVersion(version)

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        if self.fail_writes:
            raise MlflowException("database is locked")
        self.writes.append((name, alias, version))
        self.aliases[alias] = version


@pytest.fixture
def fake(monkeypatch) -> FakeClient:
    client = FakeClient({"champion": "1", "challenger": "2"})
    monkeypatch.setattr(registry, "client", lambda: client)
    return client


def test_the_alias_moves_when_it_still_points_where_the_caller_saw_it(fake):
    registry.move_alias(NAME, "champion", "2", expected="1")
    assert fake.writes == [(NAME, "champion", "2")]
    registry.move_alias(NAME, "first", "2", expected=None)  # an unset alias, seen unset
    assert fake.aliases == {"champion": "2", "challenger": "2", "first": "2"}


def test_an_alias_moved_by_someone_else_meanwhile_is_left_where_they_put_it(fake):
    # validate saw champion=1 when it started; another validate promoted version 3 since.
    fake.aliases["champion"] = "3"
    with pytest.raises(LifecycleError) as err:
        registry.move_alias(NAME, "champion", "2", expected="1")
    assert str(err.value) == (
        "churn@champion moved from version 1 to 3 while validating; "
        "nothing was changed — run validate again"
    )
    assert fake.writes == []
    assert fake.aliases["champion"] == "3"
    # Set meanwhile where the caller saw none, or removed where it saw one: refused too.
    fake.aliases["first"] = "3"
    with pytest.raises(LifecycleError, match="moved from version None to 3"):
        registry.move_alias(NAME, "first", "2", expected=None)
    del fake.aliases["champion"]
    with pytest.raises(LifecycleError, match="moved from version 1 to None"):
        registry.move_alias(NAME, "champion", "2", expected="1")
    assert fake.writes == []


def test_a_failed_write_or_a_missing_model_is_one_error_line(fake):
    fake.fail_writes = True
    with pytest.raises(LifecycleError) as err:
        registry.move_alias(NAME, "champion", "2", expected="1")
    assert str(err.value).startswith("setting churn@champion failed: ")
    assert "database is locked" in str(err.value)
    with pytest.raises(LifecycleError, match="no registered model 'other'"):
        registry.move_alias("other", "champion", "2", expected=None)
