"""Documented commands are tests: every shell line of the docs and every launch configuration.

``RUNNERS`` says, for each documented command (its file and its text without comments), what
runs it: a session below (run as written in a fresh login shell of a copy of the checkout,
placeholders replaced by stand-in values), another test, an argument check (cloud accounts),
or a skip with its reason. ``test_every_documented_command_has_a_runner`` fails, naming the file
and line, for a command nobody runs, so a new doc block cannot go untested.

Placeholders: ``/path/to/scorer.zip`` and ``~/license.sig`` are a stand-in DAI 1.10 pipeline
and its license (tests/.cache); the user's data files the docs name (``data/in.parquet``,
``data/holdout.csv``, ``in.csv``, ``input.csv``) are written into the copy from its sample;
ports are free ports; ``spark://HOST:7077`` is ``local[2]`` and ``hdfs://`` paths local folders;
``<version>`` the built wheel's version, ``<model env>`` the model's env.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from tests.docs.blocks import Command, all_commands, unlabelled_commands
from tests.docs.shell import REPO_ROOT, Session, store_client, user_checkout, user_env
from tests.fixtures_model import model_python

SESSION = "the README session (test_readme_on_your_pipeline)"
CLOUD = "a Databricks workspace: argument parsing only (test_databricks_commands_parse)"
BENCH = "a benchmark (prints figures for minutes; Makefile: none is a test); --help parses"

# (file, command without its comments) -> what runs it. Commands with the same text in several
# documents run once.
RUNNERS: Dict[Tuple[str, str], str] = {
    ("README.md", "make demo"): "skip: the same mlflow run + score.py as the README session "
    "(about 2 minutes more); tests/test_demo.py checks its step output, not the command",
    ("README.md", "make test"): "skip: it is what runs this suite",
    ("README.md", "make venvs"): SESSION,
    ("README.md", "source venvs/launcher/bin/activate"): SESSION,
    ("README.md", "export DRIVERLESS_AI_LICENSE_FILE=~/license.sig"): SESSION,
    ("README.md", "mlflow run . -P pipeline=/path/to/scorer.zip -P model_name=churn"): SESSION,
    (
        "README.md",
        "python spark_inference/score.py --model-uri models:/churn@challenger "
        "--input data/in.parquet --output data/out.parquet --env-manager uv",
    ): SESSION,
    ("README.md", "make spark-venv MODEL_URI=models:/churn@challenger"): SESSION,
    (
        "README.md",
        "venvs/spark_inference/bin/python spark_inference/score.py --model-uri "
        "models:/churn@challenger --input data/in.parquet --output data/out-local.parquet "
        "--env-manager local",
    ): SESSION,
    ("README.md", "python -m dai_mlflow.serve -m models:/churn@challenger -p 5000"): SESSION,
    (
        "README.md",
        "python -m dai_mlflow.serve.rpc --model-uri models:/churn@challenger --port 9090",
    ): SESSION,
    ("README.md", "uv build --wheel"): SESSION,
    ("README.md", 'pip install "dist/dai_mlflow-<version>-py3-none-any.whl[spark]"'): SESSION,
    (
        "README.md",
        "dai-mlflow-score --master spark://HOST:7077 --env-manager uv "
        "--model-uri models:/churn@champion --input hdfs:///in --input-format parquet "
        "--output hdfs:///scored",
    ): SESSION,
    (
        "README.md",
        "mlflow run . -e validate -P model_name=churn -P holdout=data/holdout.csv",
    ): SESSION,
    ("README.md", "mlflow run . -e deploy -P model_name=churn"): SESSION,
    ("README.md", "make undeploy MODEL_NAME=churn"): SESSION,
    (
        "README.md",
        "mlflow run . -e batch -P model_name=churn -P input=data/in.parquet "
        "-P table=data/output/scored -P date=2026-11-20",
    ): SESSION,
    (
        "README.md",
        "mlflow run . -e monitor -P model_name=churn -P table=data/output/scored "
        "-P output=data/output/monitoring",
    ): SESSION,
    ("README.md", "export MLFLOW_TRACKING_URI=databricks"): CLOUD,
    ("README.md", 'git clone --depth 1 "file://$PWD" /tmp/dai-mlflow-project'): CLOUD,
    (
        "README.md",
        "mlflow run /tmp/dai-mlflow-project -e batch --backend databricks "
        "--backend-config cluster.json -P model_name=churn "
        "-P input=/dbfs/dai/incoming/2026-11-20.parquet -P table=/dbfs/dai/scored",
    ): CLOUD,
    (
        "README.md",
        "venvs/mlproject/bin/python launchers/debug_mlproject.py -P pipeline=/path/to/scorer.zip",
    ): "tests/log/test_debug_mlproject.py::"
    "test_debug_run_as_documented_logs_the_same_model_as_mlflow_run",
    (
        "README.md",
        "venvs/spark_inference/bin/python launchers/debug_spark_inference.py "
        "--model-uri models:/churn@challenger --input in.csv --output out.parquet --sample 5",
    ): SESSION,
    (
        ".vscode/launch.json",
        "venvs/mlproject/bin/python launchers/debug_mlproject.py "
        "-P pipeline=data/generated/dai-1.10-binary/scorer.zip",
    ): "tests/log/"
    "test_debug_mlproject.py::test_debug_run_as_documented_logs_the_same_model_as_mlflow_run",
    (
        ".vscode/launch.json",
        "venvs/spark_inference/bin/python "
        "launchers/debug_spark_inference.py --model-uri models:/dai_demo@challenger "
        "--input data/generated/dai-1.10-binary/sample_input.csv "
        "--output data/output/debug.parquet --sample 5",
    ): SESSION,
    ("docs/deploy.md", "source venvs/launcher/bin/activate"): SESSION,
    ("docs/deploy.md", "mlflow run . -e deploy -P model_name=churn"): SESSION,
    (
        "docs/deploy.md",
        "mlflow run . -e deploy -P model_name=churn -P rpc=true -P port=6000",
    ): SESSION,
    ("docs/deploy.md", "mlflow run . -e deploy -P model_name=churn -P target=databricks"): CLOUD,
    (
        "docs/deploy.md",
        "make deploy MODEL_NAME=churn [TARGET=databricks] [DEPLOY_PORT=6000] [RPC=true]",
    ): SESSION + " (the [optional] arguments left out, then DEPLOY_PORT+RPC)",
    ("docs/deploy.md", "make undeploy MODEL_NAME=churn"): SESSION,
    ("docs/lifecycle.md", "source venvs/launcher/bin/activate"): SESSION,
    (
        "docs/lifecycle.md",
        "mlflow run . -e validate -P model_name=churn -P holdout=data/holdout.csv",
    ): SESSION,
    ("docs/lifecycle.md", "mlflow run . -e deploy -P model_name=churn"): SESSION,
    (
        "docs/lifecycle.md",
        "mlflow run . -e batch -P model_name=churn -P input=data/in.parquet "
        "-P table=data/output/scored",
    ): SESSION,
    (
        "docs/lifecycle.md",
        "mlflow run . -e monitor -P model_name=churn "
        "-P table=data/output/scored -P output=data/output/monitoring",
    ): SESSION,
    ("docs/lifecycle.md", "databricks secrets create-scope dai-mlflow"): "skip: the Databricks "
    "CLI (a separate install) and a workspace",
    (
        "docs/lifecycle.md",
        "databricks secrets put-secret dai-mlflow driverless-ai-license-key "
        '--string-value "$(cat license.sig)"',
    ): "skip: the Databricks CLI and a workspace",
    ("docs/lifecycle.md", "export MLFLOW_TRACKING_URI=databricks"): CLOUD,
    ("docs/lifecycle.md", 'git clone --depth 1 "file://$PWD" /tmp/dai-mlflow-project'): CLOUD,
    (
        "docs/lifecycle.md",
        "mlflow run /tmp/dai-mlflow-project -e batch --backend databricks "
        "--backend-config cluster.json -P model_name=churn "
        "-P input=/dbfs/dai/incoming/2026-11-20.parquet -P table=/dbfs/dai/scored "
        "-P date=2026-11-20",
    ): CLOUD,
    ("docs/model-envs.md", "venvs/launcher/bin/python benchmarks/model_switch.py"): BENCH,
    (
        "docs/model-envs.md",
        "DAI_MLFLOW_WARM_SERVERS=0 venvs/launcher/bin/python benchmarks/model_switch.py",
    ): BENCH,
    (
        "docs/model-envs.md",
        "venvs/launcher/bin/python benchmarks/model_switch.py "
        "--model-uri models:/churn/1 --second-model-uri models:/churn_v2/1 "
        "--tracking-uri sqlite:///mlflow.db --license-file ~/license.sig",
    ): BENCH,
    (
        "docs/serving.md",
        "venvs/launcher/bin/python benchmarks/serve_targets.py --lines 1.10,2",
    ): BENCH,
    (
        "docs/serving.md",
        "venvs/launcher/bin/python benchmarks/serve_targets.py --lines 2 "
        "--profile /tmp/serve-profile",
    ): BENCH,
    (
        "docs/image.md",
        "venvs/launcher/bin/python benchmarks/image_build.py --lines 1.10,2",
    ): BENCH,
    ("envs/README.md", "venvs/launcher/bin/python benchmarks/mlflow_run.py"): BENCH,
    (
        "envs/README.md",
        "venvs/launcher/bin/python benchmarks/mlflow_run.py "
        "--project-env envs/python_env.dai-1.10.yaml",
    ): BENCH,
    ("docs/model-hooks.md", "<model env>/bin/python -m dai_mlflow_model_hooks"): SESSION,
    (
        "docs/model-hooks.md",
        'DAI_MLFLOW_HOOKS_DEBUG=1 <model env>/bin/python -c "import mlflow"',
    ): SESSION,
    ("docs/model-hooks.md", "DAI_MLFLOW_HOOKS=0 ..."): "skip: a prefix for any command "
    "(`...`), not a command",
    ("docs/serving.md", "export DRIVERLESS_AI_LICENSE_FILE=~/license.sig"): SESSION,
    (
        "docs/serving.md",
        "mlflow models serve -m models:/churn@challenger -p 5000 --env-manager uv",
    ): SESSION,
    ("docs/serving.md", "python -m dai_mlflow.serve -m models:/churn@challenger -p 5000"): SESSION,
    ("docs/serving.md", "source venvs/spark_inference/bin/activate"): SESSION,
    (
        "docs/serving.md",
        "mlflow models serve -m /path/to/artifacts/model --env-manager local -p 5000",
    ): SESSION,
    (
        "docs/serving.md",
        "python -m dai_mlflow_model_hooks.serve --model-path "
        "/path/to/artifacts/model --host 127.0.0.1 --port 8080",
    ): SESSION,
    (
        "docs/serving.md",
        "python -m dai_mlflow.serve.rpc --model-uri models:/churn@challenger --port 9090",
    ): SESSION,
    (
        "spark_inference/README.md",
        "venvs/spark_inference/bin/python spark_inference/score.py "
        "--model-uri models:/dai_model@champion --input data/in.csv "
        "--output data/output/predictions",
    ): SESSION,
    (
        "spark_inference/README.md",
        "venvs/launcher/bin/python spark_inference/score.py "
        "--env-manager uv --model-uri models:/dai_model@champion --input data/in.parquet "
        "--output data/output/predictions",
    ): SESSION,
    ("spark_inference/README.md", "uv build --wheel"): SESSION,
    (
        "spark_inference/README.md",
        'pip install "dist/dai_mlflow-<version>-py3-none-any.whl[spark]"',
    ): SESSION,
    (
        "spark_inference/README.md",
        "python spark_inference/score.py --master spark://HOST:7077 "
        "--env-manager uv --model-uri models:/churn@champion --input hdfs:///in/2026-12-01 "
        "--input-format parquet "
        "--output hdfs:///scored/2026-12-01",
    ): SESSION,
}
IMAGE = (
    "tests/image (Docker; CI runs it): python -m dai_mlflow.image build / make image of the "
    "logged stand-in with --base-image the tests' Debian minbase (no registry here, so the "
    "default python:<minor>-slim-bookworm cannot exist), then docker run with the documented "
    "flags (-e DRIVERLESS_AI_LICENSE_KEY, -v model:/model:ro, --read-only --tmpfs /tmp)"
)
IMAGE_DEPLOY = (
    "tests/image/test_deploy_docker.py::test_a_better_champion_container_is_swapped_in_under_load"
    " (the real mlflow run . -e deploy -P target=docker)"
)
RUNNERS.update(
    {
        ("README.md", "mlflow db upgrade sqlite:///mlflow.db"): SESSION,
        ("README.md", "make image MODEL_URI=models:/churn@champion TAG=churn-dai:1.10"): IMAGE,
        (
            "README.md",
            "docker run --rm -p 127.0.0.1:8080:8080 -e DRIVERLESS_AI_LICENSE_KEY "
            "-v /path/to/artifacts/model:/model:ro --read-only --tmpfs /tmp churn-dai:1.10",
        ): IMAGE,
        ("README.md", "mlflow run . -e deploy -P model_name=churn -P target=docker"): IMAGE_DEPLOY,
        ("docs/image.md", "source venvs/launcher/bin/activate"): IMAGE,
        (
            "docs/image.md",
            "python -m dai_mlflow.image build --model-uri models:/churn@champion "
            "--tag churn-dai:1.10",
        ): IMAGE,
        ("docs/image.md", "make image MODEL_URI=models:/churn@champion TAG=churn-dai:1.10"): IMAGE,
        (
            "docs/image.md",
            "docker run --rm -p 127.0.0.1:8080:8080 -e DRIVERLESS_AI_LICENSE_KEY "
            "-v /path/to/artifacts/model:/model:ro --read-only --tmpfs /tmp churn-dai:1.10",
        ): IMAGE,
        (
            "docs/image.md",
            "python -m dai_mlflow.image build --model-uri models:/churn@champion "
            "--tag churn-dai:1.10 --base-image registry.example.com/python:3.8-slim-bookworm "
            "--index-url https://pypi.mirror.example.com/simple "
            "--https-proxy http://proxy.example.com:3128 --no-proxy .example.com "
            "--ca-certs /path/to/corporate-certs",
        ): "skip: a corporate registry, mirror and proxy; tests/image/test_context.py checks "
        "what --ca-certs and the proxy arguments put in the build context",
        (
            "docs/serving.md",
            "mlflow run . -e monitor -P model_name=churn -P table=/path/to/inference-log "
            "-P output=/path/to/monitoring",
        ): "tests/serve/test_model_server.py::test_monitor_reads_the_inference_log_as_its_window "
        "(monitor of a served model's inference log, through the entry point's request)",
    }
)
# curl lines against a server the session started: they run inside it (see _curl).
CURL_PREFIX = "curl -s localhost:"


def split(text: str) -> List[str]:
    """The words bash would see (a backslash-newline joins lines; comments dropped)."""
    return shlex.split(text.replace("\\\n", " "), comments=True)


def tokens(text: str) -> Tuple[str, ...]:
    return tuple(split(text))


def runner_of(command: Command) -> str:
    if command.text.startswith(CURL_PREFIX):
        return SESSION
    key = tokens(command.text)
    for (file, text), runner in RUNNERS.items():
        if file == command.file and tokens(text) == key:
            return runner
    return ""


def test_every_documented_command_has_a_runner() -> None:
    commands = all_commands()
    assert len(commands) > 40  # the extractor still finds the docs' commands
    missing = [f"{c.where}: {c.text!r}" for c in commands if not runner_of(c)]
    assert missing == [], "documented commands that no test runs (add them to RUNNERS):\n" + (
        "\n".join(missing)
    )
    stale = [
        f"{file}: {text!r}"
        for file, text in RUNNERS
        if not any(c.file == file and tokens(c.text) == tokens(text) for c in commands)
    ]
    assert stale == [], "RUNNERS entries no document has any more:\n" + "\n".join(stale)


def test_the_mlflow_pin_the_readme_names_is_the_launchers() -> None:
    """README tells pip users which MLflow keeps a shared sqlite store readable by the checkout's
    envs; a moved pin must move it too."""
    import re

    pins = (REPO_ROOT / "launchers" / "requirements-launcher.txt").read_text()
    (pinned,) = re.findall(r"^mlflow==(\S+)$", pins, flags=re.M)
    readme = (REPO_ROOT / "README.md").read_text()
    named = set(re.findall(r"mlflow==([0-9][0-9.]*[0-9])", readme))
    assert named == {pinned}, f"README names mlflow=={named}, launchers pin {pinned}"
    assert f"MLflow {pinned} of `venvs/launcher`" in " ".join(readme.split())


def test_every_command_fence_is_labelled() -> None:
    """An unlabelled fence that holds a command would escape the extractor: label it bash."""
    assert unlabelled_commands() == []


def test_the_extractor_joins_continuations_and_quotes(tmp_path: Path) -> None:
    from tests.docs.blocks import Fence, commands_of

    body = ["# a comment", "a \\", "  --b", "curl -d '{", '  "x": 1}\'', "# {output}", "c # n"]
    got = [(c.line, c.text) for c in commands_of(Fence("f.md", 10, "bash", body))]
    assert got == [(12, "a \\\n  --b"), (14, "curl -d '{\n  \"x\": 1}'"), (17, "c # n")]


def doc(file: str, text: str) -> Command:
    """The documented command of ``file`` whose text (without comments) is ``text``."""
    found = [c for c in all_commands() if c.file == file and tokens(c.text) == tokens(text)]
    assert found, f"{file} no longer has the command {text!r}"
    return found[0]


def doc_curls(file: str, port: str) -> List[Command]:
    return [c for c in all_commands() if c.file == file and c.text.startswith(CURL_PREFIX + port)]


# --- the sessions --------------------------------------------------------------------------


def _free_port() -> int:
    from dai_mlflow.envs.processes import free_port

    return free_port()


def _place_user_files(checkout: Path, build) -> None:  # a StandinBuild
    """The files the docs name as the user's own, made from the stand-in's sample."""
    import pandas as pd

    sample = pd.read_csv(build.sample_input_csv)
    (checkout / "data").mkdir(exist_ok=True)
    sample.to_parquet(checkout / "data" / "in.parquet", index=False)
    shutil.copy2(build.sample_input_csv, checkout / "data" / "in.csv")
    shutil.copy2(build.sample_input_csv, checkout / "in.csv")
    shutil.copy2(build.holdout_csv, checkout / "data" / "holdout.csv")
    sample.head(3).to_csv(checkout / "input.csv", index=False)
    generated = checkout / "data" / "generated" / "dai-1.10-binary"
    generated.mkdir(parents=True, exist_ok=True)
    for path in (build.zip_path, build.license_path, build.sample_input_csv):
        shutil.copy2(path, generated / Path(path).name)


def _records(build, rows: int) -> str:
    import pandas as pd

    frame = pd.read_csv(build.sample_input_csv).head(rows)
    return json.dumps(json.loads(frame.to_json(orient="records")))[1:-1]


def _curl(session: Session, command: Command, build) -> dict:
    """A documented curl line, its elided parts (``…``, ``{...}``) filled with sample rows."""
    one = _records(build, 1)
    two = _records(build, 2)
    first = json.loads(one)
    rest = ", ".join(f"{json.dumps(k)}: {json.dumps(str(v))}" for k, v in first.items()
                     if k not in ("Account Length", "Day Mins"))  # fmt: skip
    others = [k for k in first if k not in ("Account Length", "Day Mins")]
    columns = json.dumps(["Account Length", "Day Mins", *others])[1:]
    extra = [
        ('"Account Length", "Day Mins", …]', columns),
        ("[[180, 237.7, …]]", json.dumps([[180, 237.7, *[first[k] for k in others]]])),
        ("[{...}, {...}]", f"[{two}]"), ("[{…}, {…}]", f"[{two}]"), ("[{...}]", f"[{one}]"),
        ('"Day Mins": "237.7", …}', f'"Day Mins": "237.7", {rest}}}'),
    ]  # fmt: skip
    # The bodies sit in single quotes: a column such as Int'l Plan closes and reopens them.
    extra = [(old, new.replace("'", "'\\''")) for old, new in extra]
    saved = session.subs
    session.subs = saved + extra
    try:
        out = session.run(command, timeout=120)
    finally:
        session.subs = saved
    answer = json.loads(out.stdout)
    assert "error" not in answer, f"{command.where}: {answer}"
    assert "error_code" not in answer, f"{command.where}: {answer}"
    return answer


def _ping(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.loads(answer.read() or b"{}")


@pytest.mark.venv
@pytest.mark.mlflow_run
@pytest.mark.spark
@pytest.mark.serve
def test_readme_on_your_pipeline(logged_model, tmp_path) -> None:
    """README "Running it on your pipeline" in order, with serving.md, lifecycle.md,
    deploy.md and spark_inference/README.md where they take the same model further."""
    model = logged_model("1.10", "binary")  # its pipeline, license and cached model env
    build = model.build
    ports = {name: str(_free_port()) for name in ("5000", "9090", "6000", "8080")}
    subs = [
        ("/path/to/scorer.zip", str(build.zip_path)),
        ("~/license.sig", str(build.license_path)),
        *[(f"re:\\b{old}\\b", new) for old, new in ports.items()],
        ("models:/dai_model@", "models:/churn@"),
        ("models:/dai_demo@", "models:/churn@"),
    ]
    env = user_env({"DAI_MLFLOW_ENDPOINT_ROOT": str(tmp_path / "endpoints")})
    R = "README.md"
    with user_checkout() as checkout:
        _place_user_files(checkout, build)
        s = Session(checkout, env, subs)
        s.run(doc(R, "make venvs"), timeout=1200)
        s.keep(doc(R, "source venvs/launcher/bin/activate"))
        s.keep(doc(R, "export DRIVERLESS_AI_LICENSE_FILE=~/license.sig"))
        s.run(doc(R, "mlflow db upgrade sqlite:///mlflow.db"))  # the store, made first

        out = s.run(doc(R, "mlflow run . -P pipeline=/path/to/scorer.zip -P model_name=churn"))
        assert out.stdout.strip().splitlines()[-1] == "model_uri=models:/churn/1", out.stdout
        _scores_readme_and_spark_readme(s, checkout)
        _serves(s, checkout, build, ports)
        _model_hooks(s, model)
        _lifecycle(s, checkout, ports)
        _pip_installed(s, checkout, tmp_path)
    print("\n".join(s.ran))


def _scores_readme_and_spark_readme(s: Session, checkout: Path) -> None:
    import pandas as pd

    rows = len(pd.read_parquet(checkout / "data" / "in.parquet"))
    s.run(doc("README.md", "python spark_inference/score.py --model-uri models:/churn@challenger "
              "--input data/in.parquet --output data/out.parquet --env-manager uv"))  # fmt: skip
    assert len(pd.read_parquet(checkout / "data" / "out.parquet")) == rows
    # venvs/spark_inference of this checkout, as the user builds it. Not a link to the test
    # cache's Spark venv: this checkout's dai_mlflow is another site path, so a shared folder
    # would be rebuilt under the other tests that run from it (a kept checkout may still hold
    # such a link from an earlier version of this test: make would build through it).
    if (checkout / "venvs" / "spark_inference").is_symlink():
        (checkout / "venvs" / "spark_inference").unlink()
    s.run(doc("README.md", "make spark-venv MODEL_URI=models:/churn@challenger"), timeout=1200)
    s.run(doc("README.md", "venvs/spark_inference/bin/python spark_inference/score.py --model-uri "
              "models:/churn@challenger --input data/in.parquet --output data/out-local.parquet "
              "--env-manager local"))  # fmt: skip
    assert len(pd.read_parquet(checkout / "data" / "out-local.parquet")) == rows
    s.run(doc("README.md", "venvs/spark_inference/bin/python launchers/debug_spark_inference.py "
              "--model-uri models:/churn@challenger --input in.csv --output out.parquet "
              "--sample 5"))  # fmt: skip
    assert len(pd.read_parquet(checkout / "out.parquet")) == rows
    (launch,) = [c for c in all_commands() if c.file == ".vscode/launch.json"
                 and "debug_spark_inference.py" in c.text]  # fmt: skip
    s.run(launch)
    assert len(pd.read_parquet(checkout / "data" / "output" / "debug.parquet")) == rows


def _serves(s: Session, checkout: Path, build, ports: Dict[str, str]) -> None:
    R, S = "README.md", "docs/serving.md"
    p5000, p9090 = ports["5000"], ports["9090"]
    s.keep(doc(S, "export DRIVERLESS_AI_LICENSE_FILE=~/license.sig"))
    serve = doc(R, "python -m dai_mlflow.serve -m models:/churn@challenger -p 5000")
    with s.serving(serve, f"http://127.0.0.1:{p5000}/ping"):
        for curl in doc_curls(S, "5000"):
            answer = _curl(s, curl, build)
            assert answer["predictions"], f"{curl.where}: {answer}"
    rpc = doc(R, "python -m dai_mlflow.serve.rpc --model-uri models:/churn@challenger --port 9090")
    with s.serving(rpc, f"http://127.0.0.1:{p9090}/ping"):
        for curl in doc_curls(S, "9090"):
            assert _curl(s, curl, build)["result"], curl.where
    plain = doc(S, "mlflow models serve -m models:/churn@challenger -p 5000 --env-manager uv")
    with s.serving(plain, f"http://127.0.0.1:{p5000}/ping"):
        (csv,) = [c for c in doc_curls(S, "5000") if "text/csv" in c.text]
        assert len(_curl(s, csv, build)["predictions"]) == 3
    # In the model's own env (venvs/spark_inference), the model folder on disk.
    model_dir = _model_dir(checkout, "churn", "1")
    spark_session = Session(s.cwd, s.env, [*s.subs, ("/path/to/artifacts/model", str(model_dir))])
    spark_session.prelude = list(s.prelude)  # the same terminal: the license export holds
    spark_session.keep(doc(S, "source venvs/spark_inference/bin/activate"))
    local = doc(S, "mlflow models serve -m /path/to/artifacts/model --env-manager local -p 5000")
    with spark_session.serving(local, f"http://127.0.0.1:{p5000}/ping"):
        assert len(_curl(spark_session, csv, build)["predictions"]) == 3
    hooks = doc(S, "python -m dai_mlflow_model_hooks.serve --model-path /path/to/artifacts/model "
                "--host 127.0.0.1 --port 8080")  # fmt: skip
    with spark_session.serving(hooks, f"http://127.0.0.1:{ports['8080']}/ping"):
        pass
    s.ran += spark_session.ran


def _model_dir(checkout: Path, name: str, version: str) -> Path:
    client = store_client(checkout)
    run = client.get_run(client.get_model_version(name, version).run_id)
    return Path(run.info.artifact_uri) / "model"


def _model_hooks(s: Session, model) -> None:
    python = model_python(model)
    hooks = Session(s.cwd, s.env, [("<model env>", str(python.parent.parent))])
    out = hooks.run(doc("docs/model-hooks.md", "<model env>/bin/python -m dai_mlflow_model_hooks"))
    assert out.stdout.strip() or out.stderr.strip()
    debug = 'DAI_MLFLOW_HOOKS_DEBUG=1 <model env>/bin/python -c "import mlflow"'
    hooks.run(doc("docs/model-hooks.md", debug))
    s.ran += hooks.ran


def _lifecycle(s: Session, checkout: Path, ports: Dict[str, str]) -> None:
    import pandas as pd

    R, L, D = "README.md", "docs/lifecycle.md", "docs/deploy.md"
    s.run(doc(R, "mlflow run . -e validate -P model_name=churn -P holdout=data/holdout.csv"))
    # spark_inference/README.md's jobs score @champion, which validate has just set.
    S = "spark_inference/README.md"
    s.run(
        doc(
            S,
            "venvs/spark_inference/bin/python spark_inference/score.py --model-uri "
            "models:/dai_model@champion --input data/in.csv --output data/output/predictions",
        )
    )
    s.run(doc(S, "venvs/launcher/bin/python spark_inference/score.py --env-manager uv "
              "--model-uri models:/dai_model@champion --input data/in.parquet "
              "--output data/output/predictions"))  # fmt: skip
    cluster = Session(s.cwd, s.env, [*s.subs, ("spark://HOST:7077", "local[2]"),
                                     ("hdfs:///", f"{checkout}/data/hdfs/")])  # fmt: skip
    cluster.prelude = list(s.prelude)
    day = checkout / "data" / "hdfs" / "in" / "2026-12-01"  # a day's folder of parquet parts
    day.mkdir(parents=True)
    shutil.copy2(checkout / "data" / "in.parquet", day / "part-00000.parquet")
    cluster.run(
        doc(
            S,
            "python spark_inference/score.py --master spark://HOST:7077 "
            "--env-manager uv --model-uri models:/churn@champion "
            "--input hdfs:///in/2026-12-01 --input-format parquet "
            "--output hdfs:///scored/2026-12-01",
        )
    )
    undeployed = False
    try:
        s.run(doc(R, "mlflow run . -e deploy -P model_name=churn"))
        deployment = _ping("http://127.0.0.1:5050/deployment")
        assert deployment.get("version") in (1, "1"), deployment
        undeploy = doc(R, "make undeploy MODEL_NAME=churn")
        s.run(undeploy)  # deploy.md's variants are alternatives: one endpoint per model
        s.run(doc(D, "mlflow run . -e deploy -P model_name=churn -P rpc=true -P port=6000"))
        _ping(f"http://127.0.0.1:{ports['6000']}/deployment")
        s.run(undeploy)
        make_deploy = doc(D, "make deploy MODEL_NAME=churn [TARGET=databricks] "
                          "[DEPLOY_PORT=6000] [RPC=true]")  # fmt: skip
        bare = Session(s.cwd, s.env, [*s.subs, (r"re: \[[A-Z_]+=[^\]]*\]", "")])
        bare.prelude = list(s.prelude)
        bare.run(make_deploy)
        s.run(doc(R, "make undeploy MODEL_NAME=churn"))
        undeployed = True
    finally:
        if not undeployed:  # a failed step above: stop what it left serving
            s.run(doc(R, "make undeploy MODEL_NAME=churn"), expect_rc=None)
    s.ran += cluster.ran + bare.ran
    s.run(doc(R, "mlflow run . -e batch -P model_name=churn -P input=data/in.parquet "
              "-P table=data/output/scored -P date=2026-11-20"))  # fmt: skip
    s.run(doc(L, "mlflow run . -e batch -P model_name=churn -P input=data/in.parquet "
              "-P table=data/output/scored"))  # fmt: skip
    out = s.run(doc(R, "mlflow run . -e monitor -P model_name=churn -P table=data/output/scored "
                    "-P output=data/output/monitoring"))  # fmt: skip
    assert out.stdout.strip().splitlines()[-1].startswith("should_retrain="), out.stdout[-500:]
    assert len(pd.read_parquet(checkout / "data" / "output" / "scored")) > 0


def _pip_installed(s: Session, checkout: Path, tmp_path: Path) -> None:
    """README's `pip install` block in a venv of the user's own (a notebook, a node)."""
    from tests.fixtures_cluster import get_installed_venv

    R = "README.md"
    installed = get_installed_venv()  # the wheel of these sources, installed (cached)
    # Its own file system root: README's /in and /scored, apart from spark_inference's.
    node = Session(s.cwd, s.env, [*s.subs, ("spark://HOST:7077", "local[2]"),
                                  ("hdfs:///", f"{checkout}/data/hdfs-node/")])  # fmt: skip
    (checkout / "data" / "hdfs-node" / "in").mkdir(parents=True)
    shutil.copy2(checkout / "data" / "in.parquet", checkout / "data/hdfs-node/in/part-0.parquet")
    node.prelude = [f"source {shlex.quote(str(installed.parent / 'activate'))}",
                    *[line for line in s.prelude if line.startswith("export ")]]  # fmt: skip
    node.run(doc(R, "uv build --wheel"), timeout=600)
    (wheel,) = (checkout / "dist").glob("dai_mlflow-*.whl")
    version = wheel.name.split("-")[1]
    node.subs.append(("<version>", version))
    out = node.run(doc(R, 'pip install "dist/dai_mlflow-<version>-py3-none-any.whl[spark]"'))
    assert "dai_mlflow" in out.stdout + out.stderr
    node.run(
        doc(
            R,
            "dai-mlflow-score --master spark://HOST:7077 --env-manager uv "
            "--model-uri models:/churn@champion --input hdfs:///in --input-format parquet "
            "--output hdfs:///scored",
        )
    )
    s.ran += node.ran


def _parse_mlflow_run(argv: List[str], project: Path) -> dict:
    """``mlflow run`` argument parsing (click) and the entry point and params in MLproject."""
    import yaml
    from mlflow.cli import cli

    assert argv[:2] == ["mlflow", "run"], argv
    params = cli.commands["run"].make_context("run", argv[2:]).params
    entry = params["entry_point"]
    points = yaml.safe_load((project / "MLproject").read_text())["entry_points"]
    assert entry in points, f"no entry point {entry}"
    declared = points[entry].get("parameters", {})
    given = dict(p.split("=", 1) for p in params["param_list"])
    assert set(given) <= set(declared), f"undeclared params: {set(given) - set(declared)}"
    required = {k for k, v in declared.items() if not isinstance(v, dict) or "default" not in v}
    assert required <= set(given), f"missing params: {required - set(given)}"
    return params


def test_databricks_commands_parse(tmp_path: Path) -> None:
    """Commands that need a Databricks workspace: what runs without one runs (the export, the
    clean clone), the `mlflow run` lines are parsed as MLflow parses them, against MLproject."""
    clone = tmp_path / "dai-mlflow-project"
    subs = [("/tmp/dai-mlflow-project", str(clone))]
    with user_checkout() as checkout:
        git = ["git", "-c", "user.name=docs", "-c", "user.email=docs@localhost"]
        subprocess.run([*git, "init", "-q"], cwd=checkout, check=True)
        subprocess.run([*git, "add", "-A", ":!venvs", ":!data"], cwd=checkout, check=True)
        subprocess.run([*git, "commit", "-qm", "a user's clone"], cwd=checkout, check=True)
        for file in ("README.md", "docs/lifecycle.md"):
            shutil.rmtree(clone, ignore_errors=True)
            s = Session(checkout, user_env(), subs)
            s.keep(doc(file, "export MLFLOW_TRACKING_URI=databricks"))
            s.run(doc(file, 'git clone --depth 1 "file://$PWD" /tmp/dai-mlflow-project'))
            assert (clone / "cluster.json").exists()
            (run,) = [c for c in all_commands()
                      if c.file == file and "--backend databricks" in c.text]  # fmt: skip
            argv = split(Session(checkout, {}, subs).script(run))
            params = _parse_mlflow_run(argv, clone)
            assert params["backend"] == "databricks"
            json.loads((clone / params["backend_config"]).read_text())
        shutil.rmtree(checkout / ".git")
        deploy = doc("docs/deploy.md",
                     "mlflow run . -e deploy -P model_name=churn -P target=databricks")  # fmt: skip
        params = _parse_mlflow_run(split(deploy.text), checkout)
        assert "target=databricks" in params["param_list"]


def test_benchmarks_parse() -> None:
    """Benchmark commands print figures for minutes: each, as written plus ``--help``, parses,
    and every option it gives is one the benchmark has."""
    benches = [c for c in all_commands() if runner_of(c) == BENCH]
    assert len(benches) >= 4
    for command in benches:
        argv = [a for a in split(command.text) if "=" not in a or
                a.startswith("-")]  # fmt: skip
        argv[0] = str(Path(__file__).resolve().parents[2] / argv[0])
        out = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=120,
                             cwd=Path(__file__).resolve().parents[2])  # fmt: skip
        assert out.returncode == 0, f"{command.where}: {out.stderr[-2000:]}"
        for option in (a for a in argv if a.startswith("--")):
            assert option in out.stdout, f"{command.where}: {option} is not an option"
