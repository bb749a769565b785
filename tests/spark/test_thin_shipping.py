"""A new model reaches the executors without its DAI version's shared runtime wheels.

Without Spark (fast): how a model folder splits (the runtime is what its requirements install
from it, not the experiment wheel, not ``code/``), what the keys follow, what a driver adds to
a Spark application (the runtime once per application and key, hard-linked, never zipped), and
how an executor builds an env only when it has none (complete folder assembled, then removed;
the runtime untouched when the env it recorded is still there).

With Spark (``spark``, ``venv``): two DAI 1.10 models on one session, executors with an empty
env root: the first builds the env from the thin part plus the runtime, the second ships and
uses its thin part only; both score as ``score_batch``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List

import pytest

from dai_mlflow.spark import shipping, worker

EXPERIMENT = "scoring_h2oai_experiment_1a2b"


def _wheel(path: Path, members: Dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _model(
    folder: Path,
    uuid: str,
    core: bytes = b"core" * 1000,
    constraints: str = "numpy<2\n",
    experiment: str = EXPERIMENT,
    names_experiment: bool = True,
) -> Path:
    """A dai-mlflow model folder of the logged layout (docs/model-envs.md), small."""
    pipeline = folder / "artifacts" / "scoring-pipeline"
    (folder / "code" / "dai_mlflow").mkdir(parents=True)
    (folder / "code" / "dai_mlflow" / "__init__.py").write_text("")
    (folder / "MLmodel").write_text(
        f"model_uuid: {uuid}\nmetadata:\n  scorer_module: {experiment}\n"
        f"  experiment_wheel: {experiment}-1.0.0-py3-none-any.whl\n"
    )
    (folder / "python_env.yaml").write_text(
        'python: "3.8.18"\ndependencies:\n- -r requirements.txt\n'
    )
    (folder / "constraints.txt").write_text(constraints)
    _wheel(pipeline / "h2oaicore-1.10.7-cp38-cp38-linux_x86_64.whl", {"h2oaicore/c.py": core})
    _wheel(pipeline / "datatable-1.0.0-cp38-cp38-linux_x86_64.whl", {"datatable/d.py": b"dt"})
    _wheel(pipeline / "h2o4gpu-0.4.1-cp38-cp38-linux_x86_64.whl", {"h2o4gpu/g.py": b"unused"})
    _wheel(pipeline / f"{experiment}-1.0.0-py3-none-any.whl", {"s/scorer.py": uuid.encode()})
    _wheel(folder / "code" / "dai_mlflow_model_hooks-1.0.0-py3-none-any.whl", {"h.py": b"h"})
    (pipeline / "example.py").write_text("print('example')\n")
    # Models logged by older dai-mlflow name the experiment wheel too.
    named = f"./artifacts/scoring-pipeline/{experiment}-1.0.0-py3-none-any.whl\n"
    (folder / "requirements.txt").write_text(
        "pandas==1.5.3\n"
        "./artifacts/scoring-pipeline/h2oaicore-1.10.7-cp38-cp38-linux_x86_64.whl\n"
        "./artifacts/scoring-pipeline/datatable-1.0.0-cp38-cp38-linux_x86_64.whl\n"
        + (named if names_experiment else "")
        + "-c constraints.txt\n"
        "./code/dai_mlflow_model_hooks-1.0.0-py3-none-any.whl\n"
    )
    return folder


RUNTIME = (
    "artifacts/scoring-pipeline/datatable-1.0.0-cp38-cp38-linux_x86_64.whl",
    "artifacts/scoring-pipeline/h2oaicore-1.10.7-cp38-cp38-linux_x86_64.whl",
)


def test_the_runtime_is_what_the_env_installs_besides_the_experiment_wheel(tmp_path) -> None:
    model = _model(tmp_path / "m", "u1")
    parts = shipping.split_model(model)
    assert parts.runtime == RUNTIME
    assert set(parts.thin) | set(parts.runtime) == {
        p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()
    }
    assert not set(parts.thin) & set(parts.runtime)
    for kept in (
        "MLmodel",
        "requirements.txt",
        "constraints.txt",
        "code/dai_mlflow/__init__.py",
        "code/dai_mlflow_model_hooks-1.0.0-py3-none-any.whl",
        f"artifacts/scoring-pipeline/{EXPERIMENT}-1.0.0-py3-none-any.whl",
        "artifacts/scoring-pipeline/h2o4gpu-0.4.1-cp38-cp38-linux_x86_64.whl",  # not installed
    ):
        assert kept in parts.thin


def test_a_model_whose_requirements_name_no_wheel_ships_whole(tmp_path) -> None:
    model = _model(tmp_path / "m", "u1")
    (model / "requirements.txt").write_text("pandas==1.5.3\n")
    parts = shipping.split_model(model)
    assert (parts.runtime, parts.runtime_key, parts.env_id) == ((), "", "")
    assert "artifacts/scoring-pipeline/h2oaicore-1.10.7-cp38-cp38-linux_x86_64.whl" in parts.thin


def test_keys_follow_the_runtime_and_env_inputs_not_the_model(tmp_path) -> None:
    def split(name: str, uuid: str, **kwargs) -> shipping.ModelParts:
        return shipping.split_model(_model(tmp_path / name, uuid, names_experiment=False, **kwargs))

    first = split("a", "u1")
    other = split("b", "u2", experiment=EXPERIMENT + "_other")
    assert (other.runtime_key, other.env_id) == (first.runtime_key, first.env_id)
    # A runtime wheel rebuilt with other contents of the same size: another runtime, another env.
    rebuilt = split("c", "u3", core=b"CORE" * 1000)
    assert rebuilt.runtime_key != first.runtime_key
    assert rebuilt.env_id != first.env_id
    # The same runtime under other pins: the runtime is shared, the env is not.
    pinned = split("d", "u4", constraints="numpy<1.25\n")
    assert pinned.runtime_key == first.runtime_key
    assert pinned.env_id != first.env_id


class _Context:
    """What ship_model uses of a SparkContext: application id and addFile."""

    def __init__(self, app: str) -> None:
        self.applicationId = app
        self.added: List[str] = []

    def addFile(self, path: str) -> None:  # SparkContext's name
        self.added.append(path)


def test_a_second_model_of_a_seen_runtime_ships_its_thin_part_only(tmp_path) -> None:
    first, second = _model(tmp_path / "a", "u1"), _model(tmp_path / "b", "u2")
    spark = SimpleNamespace(sparkContext=_Context(f"app-{tmp_path.name}"))
    one = shipping.ship_model(spark, first)
    added = list(spark.sparkContext.added)
    assert len(added) == 1 + len(RUNTIME)
    assert [rel for _, rel in one.runtime] == list(RUNTIME)
    for name, rel in one.runtime:
        shipped = Path(next(p for p in added if p.endswith(name)))
        assert os.path.samefile(shipped, first / rel)  # a hard link: no bytes copied or zipped
    with zipfile.ZipFile(added[0]) as zf:
        assert sorted(zf.namelist()) == sorted(shipping.split_model(first).thin)

    two = shipping.ship_model(spark, second)
    new = spark.sparkContext.added[len(added) :]
    assert [Path(p).name for p in new] == [two.model_file]  # its thin part, nothing else
    assert two.runtime == one.runtime  # the executors find the runtime under the first names
    assert Path(new[0]).stat().st_size < sum((second / r).stat().st_size for r in RUNTIME)

    # Another application (a new SparkContext) gets the runtime again: the same files.
    again = SimpleNamespace(sparkContext=_Context(f"app2-{tmp_path.name}"))
    assert shipping.ship_model(again, second).runtime == one.runtime
    assert sorted(again.sparkContext.added[1:]) == sorted(added[1:])


def test_env_manager_local_never_ships_the_runtime(tmp_path) -> None:
    spark = SimpleNamespace(sparkContext=_Context(f"app-{tmp_path.name}"))
    shipped = shipping.ship_model(spark, _model(tmp_path / "a", "u1"), runtime=False)
    assert shipped.runtime == ()
    assert [Path(p).name for p in spark.sparkContext.added] == [shipped.model_file]


# ------------------------------------------------------------------------------ executor side
@pytest.fixture
def executor(tmp_path, monkeypatch):
    """Two shipped models of one runtime, as an executor's SparkFiles holds them, and a fake
    env build that records what it was given (a real one is in the Spark test below)."""
    spark = SimpleNamespace(sparkContext=_Context(f"app-{tmp_path.name}"))
    files: Dict[str, Path] = {}
    plans = {}
    for name, uuid in (("first", "u1"), ("second", "u2")):
        shipped = shipping.ship_model(spark, _model(tmp_path / name, uuid, names_experiment=False))
        plans[name] = worker.ScoringPlan(
            model_file=shipped.model_file,
            model_key=shipped.model_key,
            env_manager="uv",
            env_root=str(tmp_path / "envs"),
            runtime=shipped.runtime,
            runtime_key=shipped.runtime_key,
            env_id=shipped.env_id,
        )
    files.update({Path(p).name: Path(p) for p in spark.sparkContext.added})
    fetched: List[str] = []

    def spark_file(name: str) -> Path:
        fetched.append(name)
        return files[name]

    builds: List[Path] = []

    def build(folder: Path, installer: str, root: str, progress=None) -> Path:
        for rel in RUNTIME:  # the env is built from a complete folder
            assert (folder / rel).is_file()
        assert (folder / "MLmodel").is_file()
        builds.append(folder)
        dest = Path(root) / "model-env"
        (dest / "bin").mkdir(parents=True, exist_ok=True)
        if not (dest / "bin" / "python").exists():
            (dest / "bin" / "python").symlink_to(sys.executable)
        stamp = {"key": "k1", "python": "3.8.18"}
        (dest / ".dai-mlflow-venv.json").write_text(json.dumps(stamp))
        return dest / "bin" / "python"

    monkeypatch.setattr(worker, "_spark_file", spark_file)
    monkeypatch.setattr(worker, "ensure_model_env", build)
    monkeypatch.setattr(worker, "model_env_spec", lambda *_: SimpleNamespace(python="3.8"))
    monkeypatch.setattr(worker, "find_python", lambda _v: SimpleNamespace(version="3.8.18"))
    return SimpleNamespace(
        plans=plans, fetched=fetched, builds=builds, root=tmp_path / "envs", files=files
    )


def test_the_env_is_built_from_a_complete_folder_only_where_it_is_missing(executor) -> None:
    first, second = executor.plans["first"], executor.plans["second"]
    thin = worker.model_dir(first)
    assert not (thin / RUNTIME[1]).exists()
    assert worker.runtime_env(first, thin, "uv") == executor.root / "model-env" / "bin" / "python"
    assert len(executor.builds) == 1
    assert not executor.builds[0].exists()  # the complete folder went after the build
    runtime_names = {name for name, _ in first.runtime}
    assert runtime_names <= set(executor.fetched)

    # A new model of the same runtime: the recorded env, its runtime not even looked up.
    executor.fetched.clear()
    thin2 = worker.model_dir(second)
    assert worker.runtime_env(second, thin2, "uv") == executor.root / "model-env" / "bin" / "python"
    assert len(executor.builds) == 1
    assert executor.fetched == [second.model_file]

    # The env removed (or made stale) on this executor: built again from the runtime.
    (executor.root / "model-env" / ".dai-mlflow-venv.json").unlink()
    worker.runtime_env(second, thin2, "uv")
    assert len(executor.builds) == 2
    assert runtime_names <= set(executor.fetched)


def test_a_thin_folder_that_holds_the_runtime_is_left_as_it_is(executor) -> None:
    """A model folder extracted whole by an older dai-mlflow under the same key: the complete
    folder takes the shipped runtime, and the folder's own file is not written through a link."""
    plan = executor.plans["first"]
    thin = worker.model_dir(plan)
    own = thin / RUNTIME[1]
    own.write_bytes(b"the older extraction's copy")
    complete = worker.complete_dir(plan, thin)
    assert own.read_bytes() == b"the older extraction's copy"
    shipped = {rel: name for name, rel in plan.runtime}[RUNTIME[1]]
    assert (complete / RUNTIME[1]).read_bytes() == worker._spark_file(shipped).read_bytes()


def test_a_thin_part_and_a_whole_copy_of_one_model_keep_apart(executor, tmp_path) -> None:
    """The same model reaches a node thin (a driver's ``env_manager="local"`` job ships no
    runtime) and then whole: neither extraction is taken for the other (CI, 2026-12-07)."""
    plan = executor.plans["first"]
    local = worker.ScoringPlan(
        model_file=plan.model_file,
        model_key=plan.model_key,
        env_manager="local",
        env_root=plan.env_root,
    )
    thin = worker.model_dir(local)
    assert not (thin / RUNTIME[1]).exists()
    whole = Path(
        shutil.make_archive(
            str(tmp_path / f"model-{plan.model_key}"), "zip", str(tmp_path / "first")
        )
    )
    executor.files[whole.name] = whole
    complete = worker.model_dir(
        worker.ScoringPlan(
            model_file=whole.name,
            model_key=plan.model_key,
            env_manager="uv",
            env_root=plan.env_root,
        )
    )
    assert complete != thin
    assert (complete / RUNTIME[1]).is_file()


def test_another_interpreter_is_not_the_recorded_env(executor, monkeypatch) -> None:
    plan = executor.plans["first"]
    thin = worker.model_dir(plan)
    worker.runtime_env(plan, thin, "uv")
    monkeypatch.setattr(worker, "find_python", lambda _v: SimpleNamespace(version="3.8.19"))
    worker.runtime_env(plan, thin, "uv")
    assert len(executor.builds) == 2


# ------------------------------------------------------------------------------ on Spark
@pytest.mark.spark
@pytest.mark.venv
def test_on_spark_a_second_model_ships_its_thin_part_and_both_score_like_score_batch(
    spark, logged_model, expected_scores, tmp_path, monkeypatch
) -> None:
    """Executors with an empty env root: the first model's env is built from its thin part and
    the runtime; the second model of that DAI version sends its thin part only and never needs
    the runtime on the executor."""
    from dai_mlflow.spark import score_to_path
    from tests.fixtures_spark import assert_matches_score_batch, input_with_ids

    models = [logged_model("1.10", "binary"), logged_model("1.10", "regression")]
    parts = [shipping.split_model(m.local_dir) for m in models]
    assert parts[0].runtime  # the stand-in's h2oaicore, named by its requirements
    assert (parts[0].runtime_key, parts[0].env_id) == (parts[1].runtime_key, parts[1].env_id)
    root = tmp_path / "envs"
    added: List[List[str]] = []
    add_file = spark.sparkContext.addFile

    def recording_add_file(path: str, *args) -> None:
        added[-1].append(path)
        add_file(path, *args)

    monkeypatch.setattr(spark.sparkContext, "addFile", recording_add_file)
    record = root / "runtimes" / f"{parts[0].env_id}-uv.json"
    for i, model in enumerate(models):
        added.append([])
        input_csv = input_with_ids(model, tmp_path / f"in{i}")
        out = tmp_path / f"out{i}"
        score_to_path(
            spark,
            str(model.local_dir),
            str(input_csv),
            str(out),
            "uv",
            env=model.license_env,
            env_root=str(root),
        )
        assert_matches_score_batch(out, model, input_csv, expected_scores(model, input_csv))
        if i == 0:
            recorded = record.read_text()
            recorded_ns = record.stat().st_mode, record.stat().st_mtime_ns
    runtime_names = {name for name, _ in shipping.ship_model(spark, models[0].local_dir).runtime}
    assert runtime_names
    # The runtime is added to this application (by the first model, or by an earlier test of
    # the session); the second model added its thin archive alone.
    in_app = {Path(f).name for f in spark.sparkContext.listFiles}
    assert runtime_names <= in_app
    (thin,) = [p for p in added[1] if Path(p).name.startswith("dai-mlflow-")]
    assert Path(thin).name == f"dai-mlflow-model-{shipping.model_key(models[1].local_dir)}.zip"
    with zipfile.ZipFile(thin) as zf:
        assert sorted(zf.namelist()) == sorted(parts[1].thin)  # no runtime wheel in it
    # The executor built the env once, from a complete folder of the first model, and removed
    # that folder; the second model found the recorded env and assembled nothing.
    keys = [shipping.model_key(m.local_dir) for m in models]
    assert (root / "models" / f"{keys[0]}-complete.lock").is_file()
    assert not (root / "models" / f"{keys[1]}-complete.lock").exists()
    assert not list((root / "models").glob("*-complete"))
    assert (record.read_text(), (record.stat().st_mode, record.stat().st_mtime_ns)) == (
        recorded,
        recorded_ns,
    )
    env = Path(json.loads(recorded)["env"])
    assert env.parent == root
    assert (env / ".dai-mlflow-venv.json").is_file()
    for rel in parts[0].runtime:
        assert not (root / "models" / f"dai-mlflow-model-{keys[0]}" / rel).exists()  # stays thin
