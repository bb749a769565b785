"""Rules that turn a pipeline's requirements.txt into the model's requirements."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dai_mlflow.log.pipeline import open_pipeline
from dai_mlflow.log.requirements import (
    ARTIFACT_PREFIX,
    RequirementsError,
    RequirementsPolicy,
    canonical_name,
    sanitize,
)


def _copy(build, tmp_path: Path) -> Path:
    folder = tmp_path / "user folder name"
    shutil.copytree(build.folder, folder)
    return folder


def _names(lines) -> set:
    import re

    return {
        canonical_name(re.split(r"[=<>!~ ;@\[]", ln)[0])
        for ln in lines
        if not ln.startswith(("-", "."))
    }


@pytest.mark.parametrize("line", ["1.10", "2"])
def test_standin_requirements(standin, line: str) -> None:
    build = standin(line, "binary")
    reqs = sanitize(open_pipeline(build.folder))
    lines = list(reqs.requirements)
    wheels = [ln for ln in lines if ln.endswith(".whl")]
    assert sorted(wheels) == sorted(
        f"{ARTIFACT_PREFIX}/{w}" for w in (build.experiment_wheel, build.core_wheel)
    )
    assert not any(ln.endswith(".whl") and not ln.startswith(ARTIFACT_PREFIX) for ln in lines)
    assert "h2o4gpu" not in _names(lines)
    assert "pyorc" not in _names(lines)
    assert not any("h2o4gpu" in w for w in wheels)
    expected_mlflow = "mlflow==2.17.2" if line == "1.10" else "mlflow==3.17.2"
    assert [ln for ln in lines if ln.startswith("mlflow")] == [expected_mlflow]
    assert ("importlib-resources==5.12.0" in lines) == (line == "1.10")
    assert reqs.constraints
    assert not any(c.startswith(("h2o4gpu", "mlflow")) for c in reqs.constraints)
    assert len(lines) == len(set(lines))
    assert any("h2o4gpu" in n for n in reqs.notes)
    assert any("pyorc" in n for n in reqs.notes)


def test_exclusion_list_is_a_parameter(standin) -> None:
    build = standin("1.10", "binary")
    reqs = sanitize(open_pipeline(build.folder), RequirementsPolicy.from_csv("pyorc"))
    assert any("h2o4gpu" in ln and ln.startswith(ARTIFACT_PREFIX) for ln in reqs.requirements)
    reqs = sanitize(open_pipeline(build.folder), RequirementsPolicy.from_csv(""))
    assert any(ln.startswith("pyorc==") for ln in reqs.requirements)


def test_pyorc_kept_when_its_wheel_is_present(standin, tmp_path: Path) -> None:
    build = standin("1.10", "binary")
    folder = _copy(build, tmp_path)
    shutil.copy2(folder / build.core_wheel, folder / "pyorc-0.10.0-cp38-cp38-linux_x86_64.whl")
    reqs = sanitize(open_pipeline(folder))
    assert f"{ARTIFACT_PREFIX}/pyorc-0.10.0-cp38-cp38-linux_x86_64.whl" in reqs.requirements
    assert not any(ln.startswith("pyorc==") for ln in reqs.requirements)


def _with_lines(build, tmp_path: Path, *extra: str) -> Path:
    folder = _copy(build, tmp_path)
    req = folder / "requirements.txt"
    req.write_text(req.read_text() + "\n".join(extra) + "\n")
    return folder


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("-e ./src", "editable"),
        ("--editable=git+https://example.org/x.git#egg=x", "editable"),
        ("file:///tmp/x-1.0-py3-none-any.whl", "local file URL"),
        ("x @ file:///tmp/x-1.0-py3-none-any.whl", "local file URL"),
        ("--find-links ./wheels", "local folder"),
        ("--require-hashes", "option"),
        ("-r ../outside.txt", "not inside"),
    ],
)
def test_unreproducible_lines_are_one_line_errors(
    standin, tmp_path: Path, line: str, words: str
) -> None:
    folder = _with_lines(standin("1.10", "binary"), tmp_path, line)
    with pytest.raises(RequirementsError) as e:
        sanitize(open_pipeline(folder))
    msg = str(e.value)
    assert "\n" not in msg
    assert words in msg
    assert "requirements.txt:" in msg
    assert line.split()[0] in msg


def test_url_and_index_lines_are_kept_with_a_note(standin, tmp_path: Path) -> None:
    extra = (
        "--extra-index-url https://download.example.org/simple",
        "--find-links https://download.pytorch.org/whl/torch_stable.html",
        "requests @ https://example.org/requests-2.0-py3-none-any.whl",
    )
    folder = _with_lines(standin("1.10", "binary"), tmp_path, *extra)
    reqs = sanitize(open_pipeline(folder))
    for ln in extra:
        assert ln in reqs.requirements
        assert any(ln in n for n in reqs.notes)
    assert reqs.requirements.index(extra[0]) < reqs.requirements.index("mlflow==2.17.2")
    dropped = sanitize(open_pipeline(folder), RequirementsPolicy(index_options="drop"))
    assert extra[0] not in dropped.requirements
    assert extra[2] in dropped.requirements
    assert any("dropped index option" in n for n in dropped.notes)


def test_nested_requirement_file_and_mlflow_line(standin, tmp_path: Path) -> None:
    build = standin("2", "regression")
    folder = _with_lines(build, tmp_path, "-r extra-reqs.txt", "mlflow==2.9.0")
    (folder / "extra-reqs.txt").write_text("tabulate==0.9.0\nfoo-bar==1.0  # comment\n")
    reqs = sanitize(open_pipeline(folder))
    assert "foo-bar==1.0" in reqs.requirements
    assert "mlflow==2.9.0" not in reqs.requirements
    assert "mlflow==3.17.2" in reqs.requirements
    assert any("replaced 'mlflow==2.9.0'" in n for n in reqs.notes)


def test_no_constraints_file(standin, tmp_path: Path) -> None:
    folder = _copy(standin("2", "binary"), tmp_path)
    (folder / "req_constraints_deps.txt").unlink()
    reqs = sanitize(open_pipeline(folder))
    assert reqs.constraints == ()


@pytest.mark.parametrize(
    "line",
    [
        "--trusted-host pkgs.example.org",
        "--index-url http://pkgs.example.org/simple",
        "-i http://pkgs.example.org/simple",
        "--extra-index-url=http://pkgs.example.org/simple",
        "--find-links http://pkgs.example.org/wheels/",
        "-f http://pkgs.example.org/wheels/",
        "requests @ http://pkgs.example.org/requests-2.0-py3-none-any.whl",
        "git+http://git.example.org/x.git#egg=x",
    ],
)
def test_insecure_sources_are_refused_unless_kept_on_purpose(
    standin, tmp_path: Path, line: str
) -> None:
    folder = _with_lines(standin("1.10", "binary"), tmp_path, line)
    with pytest.raises(RequirementsError) as e:
        sanitize(open_pipeline(folder))
    msg = str(e.value)
    assert "\n" not in msg
    assert "index_options=keep-insecure" in msg
    assert line.split()[0] in msg
    kept = sanitize(open_pipeline(folder), RequirementsPolicy(index_options="keep-insecure"))
    assert line in kept.requirements
    if line.startswith("-"):
        assert any("insecure" in n for n in kept.notes)
        dropped = sanitize(open_pipeline(folder), RequirementsPolicy(index_options="drop"))
        assert line not in dropped.requirements


def test_extra_index_url_is_kept_with_a_warning(standin, tmp_path: Path) -> None:
    line = "--extra-index-url https://pkgs.example.org/simple"
    folder = _with_lines(standin("1.10", "binary"), tmp_path, line)
    reqs = sanitize(open_pipeline(folder))
    assert line in reqs.requirements
    assert any(line in n and "highest version" in n for n in reqs.notes)


SECRETS = ("s3cr3t-pw", "t0ken-abc")
WITH_CREDENTIALS = (
    "--extra-index-url https://alice:s3cr3t-pw@pkgs.example.org/simple",
    "--find-links https://t0ken-abc@pkgs.example.org/wheels/",
    "private-pkg @ https://alice:s3cr3t-pw@pkgs.example.org/private_pkg-1.0-py3-none-any.whl",
)


def test_credentials_in_urls_are_masked(standin, tmp_path: Path) -> None:
    folder = _with_lines(standin("1.10", "binary"), tmp_path, *WITH_CREDENTIALS)
    reqs = sanitize(open_pipeline(folder))
    text = "\n".join(reqs.requirements + reqs.constraints + reqs.notes)
    assert not [s for s in SECRETS if s in text]
    assert "--extra-index-url https://***@pkgs.example.org/simple" in reqs.requirements
    assert "--find-links https://***@pkgs.example.org/wheels/" in reqs.requirements
    assert sum("not stored" in n and "netrc" in n for n in reqs.notes) == 3


def test_credentials_are_masked_in_errors(standin, tmp_path: Path) -> None:
    line = "--index-url http://alice:s3cr3t-pw@pkgs.example.org/simple"
    folder = _with_lines(standin("1.10", "binary"), tmp_path, line)
    with pytest.raises(RequirementsError) as e:
        sanitize(open_pipeline(folder))
    assert "s3cr3t-pw" not in str(e.value)
    assert "http://***@pkgs.example.org/simple" in str(e.value)


def test_logged_requirements_and_run_tag_hold_no_credentials(standin, tmp_path: Path) -> None:
    from dai_mlflow.log import run

    build = standin("1.10", "binary")
    folder = _with_lines(build, tmp_path, *WITH_CREDENTIALS)
    staged = run.stage_model(folder, tmp_path / "work")
    stored = (staged.path / "requirements.txt").read_text()
    tag = run._tags(staged)[f"{run.TAG_PREFIX}requirements_notes"]
    assert "https://***@pkgs.example.org/simple" in stored
    assert "not stored" in tag
    for secret in SECRETS:
        assert secret not in stored
        assert secret not in tag
        files = [p for p in staged.path.rglob("*") if p.is_file()]
        assert not [p for p in files if secret.encode() in p.read_bytes()]
