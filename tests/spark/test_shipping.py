"""The license on its way to the executors, without Spark: when it is sent, and what is left.

- a non-local master gets it only when Spark authenticates (standalone: with a secret) and
  encrypts; otherwise one line names the confs and ``DAI_MLFLOW_SHIP_LICENSE=0``, before any
  session starts when the driver's confs already say so;
- ``DAI_MLFLOW_SHIP_LICENSE=0`` sends none (and refuses a key given in ``env=``, which would
  travel in the job's closure);
- on an executor, the fetched copy is made 0600 and moved out of the working folder into the
  executor's private scratch folder, once for all its Python workers;
- ``--conf KEY=VALUE`` and ``spark-defaults.conf`` are read as ``spark-submit`` reads them.

The end-to-end versions (a real standalone cluster with authentication and encryption on) are
in ``tests/spark/test_cluster.py``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List

import pytest

from dai_mlflow.errors import DaiMlflowError
from dai_mlflow.spark import shipping, worker
from dai_mlflow.spark.session import build_session, parse_conf, spark_defaults

SECURE = {
    "spark.authenticate": "true",
    "spark.authenticate.secret": "s3cret",
    "spark.network.crypto.enabled": "true",
}


class _Context:
    """What ship_license uses of a SparkContext: master, conf, application id, addFile."""

    def __init__(self, master: str, conf: Dict[str, str]) -> None:
        self.master = master
        self.conf = conf
        self.applicationId = f"app-{id(self)}"
        self.added: List[str] = []

    def getConf(self) -> Dict[str, str]:  # SparkContext's name
        return self.conf

    def addFile(self, path: str) -> None:  # SparkContext's name
        self.added.append(path)


def _spark(master: str, conf: Dict[str, str]) -> SimpleNamespace:
    return SimpleNamespace(sparkContext=_Context(master, conf))


@pytest.fixture
def licensed(monkeypatch, tmp_path: Path) -> Path:
    path = tmp_path / "license.sig"
    path.write_text("stand-in license for shipping checks\n")
    monkeypatch.setenv("DRIVERLESS_AI_LICENSE_FILE", str(path))
    monkeypatch.delenv(shipping.SHIP_LICENSE_ENV, raising=False)
    return path


@pytest.mark.parametrize("master", ["local", "local[2]", "local[*]", "local[2,3]"])
def test_local_masters_ship_without_conditions(licensed, master) -> None:
    spark = _spark(master, {})
    kind, name = shipping.ship_license(spark)
    assert kind == "file"
    assert name.startswith("dai-mlflow-license-")
    assert len(spark.sparkContext.added) == 1


@pytest.mark.parametrize(
    ("master", "conf", "missing"),
    [
        ("spark://h:7077", {}, list(SECURE)),
        ("spark://h:7077", {**SECURE, "spark.authenticate.secret": ""}, ["spark.authenticate."]),
        ("spark://h:7077", {**SECURE, "spark.network.crypto.enabled": "false"}, ["crypto"]),
        ("yarn", {"spark.network.crypto.enabled": "true"}, ["spark.authenticate=true"]),
        ("local-cluster[2,1,1024]", {}, ["spark.authenticate=true"]),
    ],
)
def test_a_cluster_without_auth_and_encryption_is_refused_in_one_line(
    licensed, master, conf, missing
) -> None:
    spark = _spark(master, conf)
    with pytest.raises(shipping.LicenseShippingError) as info:
        shipping.ship_license(spark)
    message = str(info.value)
    assert "\n" not in message
    for name in missing:
        assert name in message
    assert f"{shipping.SHIP_LICENSE_ENV}=0" in message
    assert spark.sparkContext.added == []


@pytest.mark.parametrize(
    ("master", "conf"),
    [
        ("spark://h:7077", SECURE),
        ("yarn", {"spark.authenticate": "true", "spark.network.crypto.enabled": "true"}),
    ],
)
def test_an_authenticated_encrypted_cluster_gets_the_license(licensed, master, conf) -> None:
    spark = _spark(master, conf)
    assert shipping.ship_license(spark)[0] == "file"
    assert spark.sparkContext.added


def test_no_license_on_the_driver_ships_nothing_and_refuses_nothing(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("DRIVERLESS_AI_LICENSE_FILE", "DRIVERLESS_AI_LICENSE_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert shipping.ship_license(_spark("spark://h:7077", {})) is None


def test_ship_license_0_leaves_the_license_to_the_nodes(licensed, monkeypatch) -> None:
    monkeypatch.setenv(shipping.SHIP_LICENSE_ENV, "0")
    spark = _spark("spark://h:7077", {})
    assert shipping.ship_license(spark) is None
    assert spark.sparkContext.added == []
    with pytest.raises(shipping.LicenseShippingError, match="DAI_MLFLOW_SHIP_LICENSE=0 sends no"):
        shipping.ship_license(spark, {"DRIVERLESS_AI_LICENSE_KEY": "a key from a secret store"})


def test_the_session_is_refused_before_it_starts(licensed, monkeypatch, tmp_path) -> None:
    """No JVM, no connection: the driver's own confs already say the license would leak."""
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))
    with pytest.raises(shipping.LicenseShippingError, match="spark.network.crypto.enabled=true"):
        build_session("spark://127.0.0.1:1", conf=[("spark.authenticate", "true")])


def test_spark_defaults_and_conf_are_read_as_spark_submit_reads_them(monkeypatch, tmp_path) -> None:
    (tmp_path / "spark-defaults.conf").write_text(
        "# comment\n\nspark.authenticate   true\nspark.authenticate.secret=abc=def\n"
        "spark.network.crypto.enabled : true\n"
    )
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))
    assert spark_defaults() == {**SECURE, "spark.authenticate.secret": "abc=def"}
    shipping.check_secure_transport("spark://h:7077", spark_defaults())
    assert parse_conf(["a=b=c", "spark.x= y"]) == (("a", "b=c"), ("spark.x", " y"))
    with pytest.raises(DaiMlflowError, match="is not KEY=VALUE"):
        parse_conf(["spark.authenticate"])


# ------------------------------------------------------------------------------ executor side
def _fetched(folder: Path, name: str) -> Path:
    """A license as Spark's fetch leaves it: created 0600, then made executable (0711)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("stand-in license\n")
    os.chmod(path, 0o711)
    return path


def test_the_executor_copy_is_0600_and_leaves_the_work_dir(tmp_path, monkeypatch) -> None:
    work = tmp_path / "work" / "app-1" / "0"
    fetched = _fetched(work, "dai-mlflow-license-abc")
    local = tmp_path / "blockmgr"
    local.mkdir()
    monkeypatch.setenv("SPARK_LOCAL_DIRS", f"{local},{tmp_path / 'other'}")
    monkeypatch.setattr(worker, "_spark_file", lambda name: work / name)
    first = worker.license_file(fetched.name)
    assert not fetched.exists()  # nothing is left in the executor's work folder
    assert first.read_text() == "stand-in license\n"
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    assert stat.S_IMODE(first.parent.stat().st_mode) == 0o700
    assert first.parent.parent == local
    # Another Python worker of the same executor, later: Spark does not fetch it again.
    assert worker.license_file(fetched.name) == first


def test_without_scratch_space_the_fetched_copy_is_made_0600(tmp_path, monkeypatch) -> None:
    fetched = _fetched(tmp_path / "work", "dai-mlflow-license-def")
    monkeypatch.delenv("SPARK_LOCAL_DIRS", raising=False)
    monkeypatch.setattr(worker, "_spark_file", lambda name: tmp_path / "work" / name)
    assert worker.license_file(fetched.name) == fetched
    assert stat.S_IMODE(fetched.stat().st_mode) == 0o600
