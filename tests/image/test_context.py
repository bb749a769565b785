"""The build context and the image's entry checks, without Docker (fast, unmarked)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from dai_mlflow.image import context as ctx
from dai_mlflow.image import entry

WHEEL = "scoring_h2oai_experiment_abc-1.0.0-py3-none-any.whl"


def _model(folder: Path, dai_version: str = "1.10.7.3", python: str = "3.8.18") -> Path:
    """A model folder laid out as dai-mlflow logs one (MLmodel, python_env, requirements)."""
    (folder / "artifacts" / "scoring-pipeline").mkdir(parents=True)
    (folder / "code").mkdir()
    (folder / "MLmodel").write_text(
        textwrap.dedent(
            f"""\
            flavors: {{python_function: {{code: code}}}}
            metadata:
              dai_version: {dai_version}
              scorer_module: scoring_h2oai_experiment_abc
              experiment_wheel: {WHEEL}
            """
        )
    )
    (folder / "python_env.yaml").write_text(
        f"python: {python}\nbuild_dependencies:\n- pip==24.3.1\n"
        "dependencies:\n- -r requirements.txt\n"
    )
    (folder / "artifacts" / "scoring-pipeline" / "h2oaicore-1.10.7.3-cp38-cp38-linux_x86_64.whl")\
        .write_bytes(b"core")  # fmt: skip
    (folder / "artifacts" / "scoring-pipeline" / WHEEL).write_bytes(b"experiment")
    (folder / "code" / "hooks-1.0.0-py3-none-any.whl").write_bytes(b"hooks")
    (folder / "constraints.txt").write_text("numpy==1.22.0\n")
    (folder / "requirements.txt").write_text(
        "mlflow==2.17.2\n./artifacts/scoring-pipeline/h2oaicore-1.10.7.3-cp38-cp38-linux_x86_64.whl\n"
        f"./artifacts/scoring-pipeline/{WHEEL}\n-c constraints.txt\n"
        "./code/hooks-1.0.0-py3-none-any.whl\n"
    )
    return folder


def test_requirements_name_local_wheels_by_file_and_leave_out_the_experiment_wheel(tmp_path):
    model = _model(tmp_path / "model")
    facts = ctx.read_model(model)
    assert (facts.dai_version, facts.python, facts.minor) == ("1.10.7.3", "3.8.18", "3.8")
    local = ctx.write_requirements(model, facts, tmp_path / "context")
    text = (tmp_path / "context" / "requirements" / "model.txt").read_text().splitlines()
    assert text == [
        "mlflow==2.17.2",
        "/build/wheels/h2oaicore-1.10.7.3-cp38-cp38-linux_x86_64.whl",
        "-c constraints.txt",
        "/build/wheels/hooks-1.0.0-py3-none-any.whl",
    ]
    assert sorted(p.name for p in local) == [
        "h2oaicore-1.10.7.3-cp38-cp38-linux_x86_64.whl",
        "hooks-1.0.0-py3-none-any.whl",
    ]
    assert (tmp_path / "context" / "requirements" / "constraints.txt").is_file()
    assert (tmp_path / "context" / "requirements" / "build.txt").read_text() == "pip==24.3.1\n"


def test_a_folder_that_is_no_dai_mlflow_model_is_refused(tmp_path):
    with pytest.raises(ctx.ImageBuildError, match="has no MLmodel"):
        ctx.read_model(tmp_path)


@pytest.mark.parametrize(
    ("from_host", "bake", "certs"), [(True, False, False), (False, True, True)]
)
def test_the_dockerfile_runs_as_non_root_with_a_healthcheck_and_no_network_step(
    tmp_path, from_host, bake, certs
):
    facts = ctx.read_model(_model(tmp_path / "model"))
    text = ctx.dockerfile("base:1", facts, from_host, bake, certs, "churn:1")
    assert "FROM base:1 AS build" in text
    assert "USER 10001:10001" in text
    assert "HEALTHCHECK" in text
    assert "--no-index" in text
    assert ("COPY python/" in text) is from_host
    assert ("LD_LIBRARY_PATH" in text) is from_host
    assert ("COPY model/" in text) is bake
    assert ("SSL_CERT_FILE" in text) is certs
    for network_step in ("apt-get", "curl", "wget", "pip download", "git clone"):
        assert network_step not in text
    assert "DAI_MLFLOW_IMAGE_DAI_VERSION=1.10.7.3" in text


def test_ca_certs_are_added_to_this_machines_bundle(tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "corp.crt").write_text(
        "-----BEGIN CERTIFICATE-----\nCORP\n-----END CERTIFICATE-----\n"
    )
    bundle = ctx.write_bundle(tmp_path / "context", certs)
    assert bundle is not None
    assert "CORP" in bundle.read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ctx.ImageBuildError, match="no .crt or .pem"):
        ctx.write_bundle(tmp_path / "other", empty)


def test_the_entry_point_wants_a_license_from_the_environment_or_a_file(tmp_path):
    with pytest.raises(entry.EntryError, match="no Driverless AI license found"):
        entry.check_license({"HOME": str(tmp_path)})
    with pytest.raises(entry.EntryError, match="is not a readable file"):
        entry.check_license({"DRIVERLESS_AI_LICENSE_FILE": str(tmp_path / "missing.sig")})
    assert entry.check_license({"DRIVERLESS_AI_LICENSE_KEY": "k"}) == "$DRIVERLESS_AI_LICENSE_KEY"
    sig = tmp_path / "license.sig"
    sig.write_text("x")
    assert entry.check_license({"DRIVERLESS_AI_LICENSE_FILE": str(sig)}) == str(sig)


def test_the_entry_point_refuses_a_model_of_another_dai_version_naming_both(tmp_path):
    import sys

    python = ".".join(map(str, sys.version_info[:3]))
    model = _model(tmp_path / "model", dai_version="2.0.1", python=python)
    with pytest.raises(entry.EntryError) as caught:
        entry.check_model(model, "1.10.7.3")
    message = str(caught.value)
    assert "Driverless AI 2.0.1" in message
    assert "Driverless AI 1.10.7.3" in message
    assert "\n" not in message
    entry.check_model(model, "2.0.1")  # its own version passes
    if os.geteuid() != 0:  # root reads anything
        (model / "constraints.txt").chmod(0)
        with pytest.raises(entry.EntryError, match="not readable"):
            entry.check_model(model, "2.0.1")
