"""Serving images (marker ``docker``): built offline from the stand-in models, run read-only.

One image per DAI line, built once by ``python -m dai_mlflow.image build`` on a Debian minbase
base with no Python (so the DAI 1.10 image carries the local CPython 3.8 build), model mounted
at run time; the DAI 2 image also baked. Every container runs ``--read-only --tmpfs /tmp`` as
the image's non-root user, with the license given at run time only.
"""

from __future__ import annotations

import io
import json
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures_model import get_logged_model
from tests.image.conftest import docker, license_args, license_strings, post_json, readable_copy

pytestmark = [pytest.mark.docker, pytest.mark.venv, pytest.mark.mlflow_run]


def _close(got, want) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(want), rtol=1e-9)


def _check_answers(url: str, truth) -> None:
    """``/invocations`` and ``/rpc`` answer what the scorer's ``score_batch`` answers."""
    records = truth["records"]
    want = truth["batch"]["values"]
    got = post_json(url + "/invocations", {"dataframe_records": records})["predictions"]
    _close([[row[c] for c in truth["batch"]["columns"]] for row in got], want)
    rpc = post_json(url + "/rpc", {"id": 1, "method": "score_batch", "params": {"rows": records}})
    _close(rpc["result"], want)


@pytest.mark.parametrize("line", ["1.10", "2"])
def test_image_serves_a_mounted_model_read_only_like_score_batch(
    line, serving_image, containers, scorer_truth, tmp_path
):
    image = serving_image(line)
    config = json.loads(docker("image", "inspect", image.tag).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert config["Healthcheck"]["Test"][0] == "CMD"
    # The image holds the Dockerfile it was built from (the command docs/image.md gives).
    held = docker("run", "--rm", "--network", "none", "--entrypoint", "cat", image.tag,
                  "/opt/dai-mlflow/bin/Dockerfile")  # fmt: skip
    assert "docker build --network=none" in held.stdout
    model = image.model
    mounted = readable_copy(model.local_dir, tmp_path / "model")
    args = ["-v", f"{mounted}:/model:ro", *license_args(model, tmp_path)]
    box = containers.run(image.tag, args, env=model.license_env)
    seconds = box.wait_ping()
    print(f"DAI {line}: container start to /ping {seconds:.1f}s (mounted model)")
    _check_answers(box.url, scorer_truth(model))
    with urllib.request.urlopen(box.url + "/metrics", timeout=30) as answer:
        assert answer.status == 200
        assert "dai_mlflow_requests_total{" in answer.read().decode()
    # It stops cleanly on SIGTERM.
    docker("stop", "-t", "30", box.name, timeout=60)
    assert box.wait_exit() == 0, box.logs()[-2000:]
    if line == "1.10":  # the image that carries a copy of this machine's Python
        _assert_no_layer_holds(image.tag, license_strings(model), tmp_path)


def test_a_second_model_of_the_same_version_is_mounted_and_answers(
    serving_image, containers, scorer_truth, tmp_path
):
    image = serving_image("1.10")
    other = get_logged_model("1.10", "multiclass")
    mounted = readable_copy(other.local_dir, tmp_path / "model")
    args = ["-v", f"{mounted}:/model:ro", *license_args(other, tmp_path)]
    box = containers.run(image.tag, args, env=other.license_env)
    seconds = box.wait_ping()
    print(f"DAI 1.10: a second model mounted: start to /ping {seconds:.1f}s")
    _check_answers(box.url, scorer_truth(other))


def test_a_model_of_another_dai_version_is_refused_in_one_line(serving_image, containers, tmp_path):
    image = serving_image("1.10")
    other = get_logged_model("2", "binary")
    mounted = readable_copy(other.local_dir, tmp_path / "model")
    args = ["-v", f"{mounted}:/model:ro", *license_args(other, tmp_path)]
    box = containers.run(image.tag, args, env=other.license_env)
    assert box.wait_exit() == 2
    lines = [ln for ln in box.logs().splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: ")
    assert "Driverless AI 2." in lines[0]
    assert "Driverless AI 1.10." in lines[0]


def test_without_a_license_the_container_exits_with_one_line(serving_image, containers, tmp_path):
    image = serving_image("1.10")
    mounted = readable_copy(image.model.local_dir, tmp_path / "model")
    box = containers.run(image.tag, ["-v", f"{mounted}:/model:ro"])
    assert box.wait_exit() != 0
    lines = [ln for ln in box.logs().splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: no Driverless AI license found")


def test_a_baked_image_serves_and_no_layer_holds_the_license(
    serving_image, containers, scorer_truth, tmp_path
):
    image = serving_image("2", bake=True)
    model = image.model
    box = containers.run(image.tag, license_args(model, tmp_path), env=model.license_env)
    seconds = box.wait_ping()
    print(f"DAI 2: container start to /ping {seconds:.1f}s (baked model)")
    _check_answers(box.url, scorer_truth(model))

    _assert_no_layer_holds(image.tag, license_strings(model), tmp_path)


def _assert_no_layer_holds(tag: str, secrets, tmp_path: Path) -> None:
    """Every file of every layer, and the image's config, searched for the license."""
    saved = tmp_path / "image.tar"
    docker("save", "-o", str(saved), tag, timeout=900)
    searched = 0
    with tarfile.open(saved) as outer:
        for member in outer:
            if not member.isfile():
                continue
            data = outer.extractfile(member).read()  # type: ignore[union-attr]
            blobs = [data]
            if member.name.endswith("layer.tar") or "blobs/" in member.name:
                try:
                    with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                        blobs = [data] + [
                            layer.extractfile(f).read()  # type: ignore[union-attr]
                            for f in layer
                            if f.isfile()
                        ]
                except tarfile.ReadError:
                    pass
            for blob in blobs:
                searched += 1
                for secret in secrets:
                    assert secret not in blob, f"the license is in {member.name} of {tag}"
    assert searched > 1000  # the layers were opened, not just the manifest
    assert (Path(str(saved)).stat().st_size) > 100e6
    saved.unlink()
