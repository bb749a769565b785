"""Serving images per DAI line: size, cold and cached build, container start to first answer.

    venvs/launcher/bin/python benchmarks/image_build.py [--lines 1.10,2]
    make bench-image            # both DAI lines

For each DAI line, the tests' stand-in binary model (logged once, cached under ``tests/.cache``)
is built into a serving image by ``python -m dai_mlflow.image build``, as a user runs it, on the
tests' Python-less Debian minbase base image. The Docker daemon is a private one started by
``.ci/dockerd.sh`` with a fresh data root (so the first build has no build cache), stopped at
the end; with ``DOCKER_HOST`` set, that daemon is used instead and the first build may reuse
its cache. The wheels come from the host's wheel cache as the build command keeps it.

Measured: image size (``docker image inspect``), the first build (cold) and the same command
again (cached), a ``--bake-model`` build after them; then ``docker run`` (``--network host
--read-only --tmpfs /tmp``, one worker) to the first good ``/invocations`` answer for the model
mounted at ``/model``, for the baked image, and for a second model of that line (the multiclass
stand-in) mounted into a new container. The license is given as ``-e DRIVERLESS_AI_LICENSE_KEY``
from this process's environment only. Nothing is asserted on the figures.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

START_TIMEOUT = 600.0
KEY_ENV = "DRIVERLESS_AI_LICENSE_KEY"


def say(text: str) -> None:
    print(f"[bench-image] {text}", file=sys.stderr, flush=True)


def timed_build(model, tag: str, base: str, extra: List[str]) -> float:
    """Wall seconds of one ``python -m dai_mlflow.image build`` (the user's wait)."""
    from tests.image.conftest import build_cli

    started = time.monotonic()
    proc = build_cli(model, tag, base, extra, {})
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"build of {tag} failed: {proc.stderr.strip()[-1500:]}")
    return seconds


def image_mb(tag: str) -> float:
    from tests.image.conftest import docker

    return int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout.strip()) / 1e6


def _ask(url: str, body: bytes, rows: int) -> bool:
    req = urllib.request.Request(
        url + "/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.loads(resp.read())
    except (OSError, ValueError, urllib.error.HTTPError):
        return False
    return len(answer.get("predictions", [])) == rows


def start_to_answer(pool, tag: str, args: List[str], model) -> float:
    """Seconds from ``docker run`` to the first good ``/invocations`` answer; the container is
    removed after."""
    from tests.image.conftest import docker

    example = model.local_dir / "serving_input_example.json"
    body = example.read_bytes()
    rows = len(json.loads(body)["dataframe_split"]["data"])
    # The key reaches the container through the docker client's environment only.
    key = base64.b64encode(model.build.license_path.read_bytes()).decode()
    started = time.monotonic()
    box = pool.run(tag, [*args, "-e", KEY_ENV], env={KEY_ENV: key})
    try:
        while time.monotonic() - started < START_TIMEOUT:
            if _ask(box.url, body, rows):
                return time.monotonic() - started
            state = docker("inspect", "-f", "{{.State.Running}}", box.name, check=False)
            if state.stdout.strip() == "false":
                raise RuntimeError(f"{tag} exited before answering: {box.logs()[-1500:]}")
            time.sleep(0.1)
        raise RuntimeError(f"{tag} gave no good answer in {START_TIMEOUT:.0f}s")
    finally:
        docker("rm", "-f", box.name, check=False)


def measure_line(line: str, base: str, folder: Path, pool, out: Dict[str, float]) -> None:
    """Fill ``out`` with the figures of one DAI line (partly, when a step fails)."""
    from tests.fixtures_model import get_logged_model
    from tests.image.conftest import docker, readable_copy

    say(f"DAI {line}: the stand-in models (logged once, then cached)")
    model = get_logged_model(line, "binary")
    other = get_logged_model(line, "multiclass")
    name = f"dai-mlflow-bench-{line.replace('.', '-')}-{uuid.uuid4().hex[:8]}"
    tag, baked = f"{name}:latest", f"{name}-baked:latest"
    try:
        say(f"DAI {line}: cold build of {tag}")
        out["cold"] = timed_build(model, tag, base, [])
        out["size"] = image_mb(tag)
        say(f"DAI {line}: the same command again")
        out["cached"] = timed_build(model, tag, base, [])
        say(f"DAI {line}: --bake-model build of {baked}")
        out["baked_build"] = timed_build(model, baked, base, ["--bake-model"])
        out["baked_size"] = image_mb(baked)
        mounted = readable_copy(model.local_dir, folder / f"{line}-model")
        say(f"DAI {line}: start to first answer, mounted model")
        out["start_mounted"] = start_to_answer(pool, tag, ["-v", f"{mounted}:/model:ro"], model)
        say(f"DAI {line}: start to first answer, baked model")
        out["start_baked"] = start_to_answer(pool, baked, [], model)
        second = readable_copy(other.local_dir, folder / f"{line}-second")
        say(f"DAI {line}: start to first answer, a second model mounted")
        out["start_second"] = start_to_answer(pool, tag, ["-v", f"{second}:/model:ro"], other)
    finally:
        # The next line's first build starts from no cache of this one.
        docker("rmi", "-f", tag, baked, check=False)
        docker("image", "prune", "-f", check=False)


ROWS = (
    ("image size (MB, docker image inspect)", "size", "{:.0f}"),
    ("cold build, no build cache (s)", "cold", "{:.1f}"),
    ("cached build, same command again (s)", "cached", "{:.1f}"),
    ("--bake-model build, after those (s)", "baked_build", "{:.1f}"),
    ("baked image size (MB)", "baked_size", "{:.0f}"),
    ("start to first answer, mounted model (s)", "start_mounted", "{:.1f}"),
    ("start to first answer, baked model (s)", "start_baked", "{:.1f}"),
    ("start to first answer, 2nd model mounted (s)", "start_second", "{:.1f}"),
)


def print_table(figures: Dict[str, Dict[str, float]], base: str) -> None:
    lines = list(figures)
    print(f"serving images: stand-in binary model per DAI line, base {base} (no Python)")
    print(f"{'':46}" + "".join(f"{'DAI ' + ln:>12}" for ln in lines))
    for label, key, fmt in ROWS:
        cells = [fmt.format(figures[ln][key]) if key in figures[ln] else "-" for ln in lines]
        print(f"{label:46}" + "".join(f"{c:>12}" for c in cells))
    print(
        "start = `docker run -d` to the first 200 /invocations answer with every row scored "
        "(--network host --read-only --tmpfs /tmp, WORKERS=1); "
        "2nd model = the multiclass stand-in of that line in a new container"
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", default="1.10,2", help="DAI lines, comma-separated")
    args = parser.parse_args(argv)
    lines = [x.strip() for x in args.lines.split(",") if x.strip()]

    from tests.image.conftest import (
        Containers,
        import_base_image,
        start_dockerd,
        stop_dockerd,
    )

    folder = Path(tempfile.mkdtemp(prefix="dai-mlflow-bench-image-"))
    run_dir: Optional[Path] = None
    given = os.environ.get("DOCKER_HOST", "")
    if given:
        say(f"using DOCKER_HOST={given} (its build cache may make the first build warm)")
    else:
        # A short folder: the socket path must stay under 108 bytes.
        run_dir = Path(tempfile.mkdtemp(prefix="dai-mlflow-dockerd-"))
        say("starting a private dockerd with a fresh data root")
        os.environ["DOCKER_HOST"] = start_dockerd(run_dir, run_dir / "data")
    pool = Containers(folder)
    figures: Dict[str, Dict[str, float]] = {}
    status = 0
    try:
        base = import_base_image()
        for line in lines:
            try:
                measure_line(line, base, folder, pool, figures.setdefault(line, {}))
            except (RuntimeError, AssertionError) as e:
                say(f"DAI {line}: failed: {e}")
                status = 1
        print_table(figures, base)
    finally:
        pool.close()
        if run_dir is not None:
            stop_dockerd(run_dir)
            shutil.rmtree(run_dir, ignore_errors=True)
            os.environ.pop("DOCKER_HOST", None)
        shutil.rmtree(folder, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
