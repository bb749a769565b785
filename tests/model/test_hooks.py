"""The interpreter-start hooks every model carries, their stdin server, and the wheels.

Pure tests (no env, no Spark): which ``sys.path`` entries count as another Python's PySpark,
when a stdin-server script is foreign, the protocol pieces of the stdin server, and the wheels'
contents. ``test_hooks_in_a_model_env_*`` (marker ``venv``) starts the interpreter of a real
Python 3.8 model env (built from a logged model's requirements, so the hooks wheel is installed)
with the driver's PySpark 4 on ``PYTHONPATH`` and shows the hook taking it off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from dai_mlflow.log.model_wheels import (
    HOOKS_PROJECT,
    SHIM_PROJECT,
    add_to_model,
    build_hooks_wheel,
    build_shim_wheel,
    hooks_version,
)
from dai_mlflow.model import hooks as model_hooks
from dai_mlflow.model.hooks import (
    FilenoStream,
    ImportHooks,
    drop_foreign_spark,
    ensure_stream_filenos,
    foreign_spark_entries,
    foreign_stdin_server,
    pyspark_min_python,
    pyspark_version,
)
from dai_mlflow.model.hooks import stdin_server as server
from tests.fixtures_model import model_python


def _spark_distribution(root: Path, version: str) -> Path:
    """A Spark install laid out like a distribution: python/lib/pyspark.zip + py4j."""
    lib = root / "python" / "lib"
    lib.mkdir(parents=True)
    with zipfile.ZipFile(lib / "pyspark.zip", "w") as zf:
        zf.writestr("pyspark/__init__.py", "")
        zf.writestr("pyspark/version.py", f'__version__: str = "{version}"\n')
    with zipfile.ZipFile(lib / "py4j-0.10.9.9-src.zip", "w") as zf:
        zf.writestr("py4j/__init__.py", "")
    return lib


def test_pyspark_lines_know_their_oldest_python() -> None:
    assert pyspark_min_python("4.3.0") == (3, 9)
    assert pyspark_min_python("4.0.0.dev1") == (3, 9)
    assert pyspark_min_python("3.5.8") == (3, 8)
    assert pyspark_min_python("3.4.1") == (3, 7)
    assert pyspark_min_python("2.4.8") is None
    assert pyspark_min_python(None) is None


def test_pyspark_version_from_zip_folder_and_pip_layout(tmp_path: Path) -> None:
    lib = _spark_distribution(tmp_path / "dist", "4.3.0")
    assert pyspark_version(str(lib / "pyspark.zip")) == "4.3.0"
    assert pyspark_version(str(lib / "py4j-0.10.9.9-src.zip")) == "4.3.0"  # from its Spark
    pip_home = tmp_path / "site" / "pyspark"  # pip's layout: SPARK_HOME is the package
    (pip_home / "python" / "lib").mkdir(parents=True)
    (pip_home / "__init__.py").write_text("")
    (pip_home / "version.py").write_text("__version__ = '3.5.8'\n")
    assert pyspark_version(str(tmp_path / "site")) == "3.5.8"  # a folder holding pyspark/
    missing_zip = pip_home / "python" / "lib" / "pyspark.zip"  # Spark names it even if absent
    assert pyspark_version(str(missing_zip)) == "3.5.8"


def test_only_foreign_pyspark_that_does_not_fit_is_dropped(tmp_path: Path) -> None:
    new = _spark_distribution(tmp_path / "spark4", "4.3.0")
    old = _spark_distribution(tmp_path / "spark35", "3.5.8")
    other = tmp_path / "plain"
    other.mkdir()
    path = [str(other), str(new / "pyspark.zip"), str(new / "py4j-0.10.9.9-src.zip")]
    path += [str(old / "pyspark.zip")]
    found = foreign_spark_entries(path, python=(3, 8))
    assert [entry for entry, _ in found] == path[1:3]
    assert "PySpark 4.3.0 needs Python >= 3.9" in found[0][1]
    assert foreign_spark_entries(path, python=(3, 11)) == []  # PySpark 4 fits 3.11
    # Entries inside this interpreter's prefix are its own, whatever they hold.
    own = [p for p in sys.path if p.startswith(sys.prefix) and os.path.isdir(p)]
    assert foreign_spark_entries(own, python=(3, 8)) == []
    edited = list(path)
    assert drop_foreign_spark(edited, python=(3, 8)) == path[1:3]
    assert edited == [path[0], path[3]]


def test_streams_get_a_fileno(monkeypatch) -> None:
    class NoFileno:
        def write(self, data: str) -> int:
            return len(data)

        def fileno(self) -> int:
            raise AttributeError("'StreamToLogger' object has no attribute 'fileno'")

    monkeypatch.setattr(sys, "stdout", NoFileno())
    monkeypatch.setattr(sys, "stderr", None)
    ensure_stream_filenos()
    assert sys.stdout.fileno() == 1
    assert sys.stderr.fileno() == 2
    assert sys.stdout.write("still writes") == len("still writes")
    assert isinstance(sys.stdout, FilenoStream)
    ensure_stream_filenos()  # idempotent: no proxy of a proxy
    assert isinstance(sys.stdout._stream, NoFileno)


def test_import_hook_fixes_streams_only_for_dai_modules(monkeypatch) -> None:
    class NoFileno:
        def write(self, data: str) -> int:
            return len(data)

    hooks = ImportHooks()
    monkeypatch.setattr(sys, "stdout", NoFileno())
    assert hooks.find_spec("pandas") is None
    assert not hasattr(sys.stdout, "fileno")
    assert hooks.find_spec("scoring_h2oai_experiment_6a77d0a4") is None  # watches, never finds
    assert sys.stdout.fileno() == 1


def test_a_stdin_server_script_is_foreign_only_for_another_mlflow(tmp_path: Path) -> None:
    def mlflow_at(root: Path, version: str) -> Path:
        (root / "mlflow" / "pyfunc").mkdir(parents=True)
        (root / "mlflow" / "version.py").write_text(f'VERSION = "{version}"\n')
        script = root / "mlflow" / "pyfunc" / "stdin_server.py"
        script.write_text("")
        return script

    theirs = mlflow_at(tmp_path / "driver", "3.17.2")
    same = mlflow_at(tmp_path / "same", "2.17.2")
    mlflow_at(tmp_path / "env", "2.17.2")
    env = str(tmp_path / "env")
    assert foreign_stdin_server([str(theirs), "--model-uri", "m"], env) == str(theirs.parents[1])
    assert foreign_stdin_server([str(same)], env) is None
    assert foreign_stdin_server([str(tmp_path / "x.py")], env) is None
    assert foreign_stdin_server(["-c"], env) is None
    assert foreign_stdin_server([str(theirs)], str(tmp_path / "no-mlflow")) is None


def test_stdin_server_reads_mlflow_payloads_and_casts_to_the_schema() -> None:
    frame = pd.DataFrame({"a": [1, None], "b": ["x", None], "c": [3, 4]})
    split = json.dumps({"dataframe_split": frame.to_dict(orient="split"), "params": {"p": True}})
    parsed, params = server.parse_data(split)
    assert params == {"p": True}
    cast = server.cast_to_schema(parsed, [("a", "double"), ("b", "string"), ("c", "double")])
    assert str(cast["c"].dtype) == "float64"
    assert cast["c"].tolist() == [3.0, 4.0]
    assert pd.isna(cast["a"][1])
    assert cast["b"].tolist() == ["x", None]
    records = {"dataframe_records": [{"a": 1.5, "b": "y"}]}
    assert server.parse_data(records)[0].to_dict("records") == [{"a": 1.5, "b": "y"}]
    with pytest.raises(ValueError, match="dataframe_split"):
        server.parse_data({"rows": []})
    with pytest.raises(ValueError, match="'a' must be double"):
        server.cast_to_schema(pd.DataFrame({"a": ["nope"]}), [("a", "double")])


def test_stdin_server_answers_with_every_digit() -> None:
    preds = pd.DataFrame({"y.0": [0.1234567890123456789], "y.1": [float("nan")]})
    answer = json.loads(server.predictions_json(preds, "id-1"))
    assert answer["id"] == "id-1"
    assert answer["predictions"][0]["y.0"] == 0.1234567890123456789
    assert answer["predictions"][0]["y.1"] != answer["predictions"][0]["y.1"]  # NaN survives


def test_database_tracking_stores_are_swapped_for_a_file_store(tmp_path: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": "sqlite:///x/mlflow.db", "MLFLOW_REGISTRY_URI": "http://r"}
    out = server.scratch_tracking_environ(env, tmp_path / "store")
    assert out["MLFLOW_TRACKING_URI"] == (tmp_path / "store").as_uri()
    assert out["MLFLOW_REGISTRY_URI"] == "http://r"
    assert server.scratch_tracking_environ({"MLFLOW_TRACKING_URI": "databricks"}) == {
        "MLFLOW_TRACKING_URI": "databricks"
    }


def test_the_hooks_wheel_holds_the_package_and_a_pth(tmp_path: Path) -> None:
    wheel = build_hooks_wheel(tmp_path / "a")
    assert build_hooks_wheel(tmp_path / "b").read_bytes() == wheel.read_bytes()
    version = hooks_version()
    assert wheel.name == f"{HOOKS_PROJECT}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        pth = zf.read(f"{HOOKS_PROJECT}.pth").decode()
        source = zf.read(f"{HOOKS_PROJECT}/__init__.py")
        metadata = zf.read(f"{HOOKS_PROJECT}-{version}.dist-info/METADATA").decode()
    assert pth.startswith(f"import {HOOKS_PROJECT};")
    assert source == Path(model_hooks.__file__).read_bytes()
    for module in ("stdin_server.py", "serving_shim.py", "__main__.py"):
        assert f"{HOOKS_PROJECT}/{module}" in names
    assert 'Requires-Dist: importlib-resources>=5; python_version < "3.9"' in metadata


def test_the_shim_wheel_is_a_uvicorn_script_into_the_hooks(tmp_path: Path) -> None:
    wheel = build_shim_wheel(tmp_path)
    version = hooks_version()
    with zipfile.ZipFile(wheel) as zf:
        dist_info = f"{SHIM_PROJECT}-{version}.dist-info"
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        assert all(n.startswith(dist_info) for n in zf.namelist())
    assert f"uvicorn = {HOOKS_PROJECT}.serving_shim:main" in entry_points
    assert f"Requires-Dist: {HOOKS_PROJECT}=={version}" in metadata


def test_models_get_the_hooks_and_python_38_models_the_shim(tmp_path: Path) -> None:
    lines = add_to_model(tmp_path / "m38", "3.8.18")
    assert [Path(line).name.split("-")[0] for line in lines] == [HOOKS_PROJECT, SHIM_PROJECT]
    assert all((tmp_path / "m38" / line).is_file() for line in lines)
    assert [Path(line).name.split("-")[0] for line in add_to_model(tmp_path / "m", "3.11.7")] == [
        HOOKS_PROJECT
    ]
    with pytest.raises(Exception, match="not X.Y"):
        add_to_model(tmp_path / "bad", "three")


# ------------------------------------------------------------------------------ in a model env
@pytest.mark.venv
def test_hooks_in_a_model_env_drop_the_drivers_pyspark(logged_model) -> None:
    """The Python 3.8 model env, started the way a Spark worker starts its model server:
    the driver's PySpark 4 on PYTHONPATH. The hook takes it off before anything imports it."""
    python = model_python(logged_model("1.10", "binary"))
    import pyspark

    driver_site = str(Path(pyspark.__file__).resolve().parents[1])  # holds pyspark 4 (3.11)
    env = {**os.environ, "PYTHONPATH": driver_site, "DAI_MLFLOW_HOOKS_DEBUG": "1"}
    probe = "import sys; print(repr(sys.path)); import mlflow; print('mlflow', mlflow.__version__)"
    out = subprocess.run(
        [str(python), "-c", probe], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"dropped {driver_site} from sys.path (PySpark " in out.stderr
    assert driver_site not in out.stdout.splitlines()[0]
    assert "mlflow 2.17" in out.stdout
    off = {**env, "DAI_MLFLOW_HOOKS": "0"}  # without the hook: the failure the hook prevents
    broken = subprocess.run(
        [str(python), "-c", "import pyspark"], env=off, capture_output=True, text=True
    )
    assert broken.returncode != 0
    report = subprocess.run(
        [str(python), "-m", "dai_mlflow_model_hooks"], env=env, capture_output=True, text=True
    )
    assert "installed at start-up: yes" in report.stdout
    assert f"dropped {driver_site}" in report.stdout
