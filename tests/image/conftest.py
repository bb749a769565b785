"""Fixtures of the serving-image tests (marker ``docker``).

- ``docker_host`` (session): a Docker daemon. ``DOCKER_HOST`` when one answers there (CI's
  ``.ci/run`` starts one with ``.ci/dockerd.sh``); else a private one started here with the same
  script (data root ``tests/.cache/docker/root``, so image layers are reused by the next
  session) and stopped at the end. No daemon and no ``dockerd``: the tests skip, except under
  ``CI=true``, where they fail.
- ``base_image``: ``dai-mlflow-test-base:bookworm``, Debian bookworm minbase (no Python) from
  the machine's Debian mirror, imported once; its tarball is cached in ``tests/.cache/docker``.
- ``serving_image(line, bake=False)``: the image of the stand-in binary model of that DAI line,
  built once per session by the real build (``python -m dai_mlflow.image build``).
- ``containers``: runs images (``--network host``: the daemon has no bridge) and removes every
  container it started.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest

from dai_mlflow.envs.processes import free_port
from tests.fixtures_model import LAUNCHER_BIN, LoggedDaiModel, get_logged_model, run_env

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE = REPO_ROOT / "tests" / ".cache" / "docker"
SCRIPT = REPO_ROOT / ".ci" / "dockerd.sh"
BASE_IMAGE = "dai-mlflow-test-base:bookworm"
BASE_TARBALL = CACHE / "debian-bookworm-minbase.tar"


def _answers(host: str) -> bool:
    docker = shutil.which("docker")
    if not docker:
        return False
    proc = subprocess.run(
        [docker, "-H", host, "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        timeout=60,
    )
    return proc.returncode == 0


def _unavailable(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the docker tests must run under CI: {why}")
    pytest.skip(why)


def start_dockerd(run_dir: Path, data_root: Path) -> str:
    """Start a private dockerd (``.ci/dockerd.sh``) and return its ``DOCKER_HOST``."""
    proc = subprocess.run(
        ["bash", str(SCRIPT), "start", str(run_dir), str(data_root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"dockerd did not start: {proc.stderr.strip()[-300:]}")
    return proc.stdout.strip().splitlines()[-1].split("=", 1)[1]


def stop_dockerd(run_dir: Path) -> None:
    """Remove the containers of the daemon started in ``run_dir`` and stop it."""
    subprocess.run(["bash", str(SCRIPT), "stop", str(run_dir)], timeout=120)


@pytest.fixture(scope="session")
def docker_host() -> Iterator[str]:
    """``DOCKER_HOST`` of a running daemon (see the module docstring)."""
    given = os.environ.get("DOCKER_HOST", "")
    if given and _answers(given):
        yield given
        return
    if not shutil.which("docker") or not shutil.which("dockerd"):
        _unavailable("no docker client or dockerd here (apt-get install docker.io)")
    if os.geteuid() != 0:
        _unavailable("starting a private dockerd needs root")
    # A short folder: the socket path must stay under 108 bytes.
    run_dir = Path(tempfile.mkdtemp(prefix="dai-mlflow-dockerd-"))
    CACHE.mkdir(parents=True, exist_ok=True)
    # The cached data root (image layers kept across sessions) serves one daemon at a time;
    # a second test worker gets a daemon of its own with a fresh one.
    lock = open(CACHE / "root.lock", "w")  # noqa: SIM115 (held for the session)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        data_root = CACHE / "root"
    except OSError:
        data_root = run_dir / "data"
    try:
        host = start_dockerd(run_dir, data_root)
    except RuntimeError as e:
        shutil.rmtree(run_dir, ignore_errors=True)
        _unavailable(str(e))
    saved = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = host
    try:
        yield host
    finally:
        stop_dockerd(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        lock.close()
        if saved is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = saved


def docker(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"docker {' '.join(args[:3])}: {proc.stderr[-2000:]}"
    return proc


@pytest.fixture(scope="session")
def base_image(docker_host: str) -> str:
    """A Debian bookworm minbase image with no Python at all."""
    return import_base_image()


def import_base_image() -> str:
    """Import the base image into ``DOCKER_HOST``'s daemon (debootstrap once, then the tarball)."""
    proc = subprocess.run(
        ["bash", str(SCRIPT), "base-image", BASE_IMAGE, str(BASE_TARBALL)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return BASE_IMAGE


def readable_copy(model_dir: Path, dest: Path) -> Path:
    """The model folder copied where the container's user (uid 10001) can read it."""
    shutil.copytree(model_dir, dest)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    line: str
    model: LoggedDaiModel
    baked: bool
    seconds: float
    size_bytes: int
    output: str


def build_cli(model: LoggedDaiModel, tag: str, base: str, extra: List[str], env: Dict[str, str]):
    """``python -m dai_mlflow.image build`` from ``venvs/launcher``, as a user runs it."""
    cmd = [str(LAUNCHER_BIN / "python"), "-m", "dai_mlflow.image", "build", "--model-uri",
           model.model_uri, "--tag", tag, "--base-image", base, *extra]  # fmt: skip
    full = {**run_env(env), "MLFLOW_TRACKING_URI": model.tracking_uri, "PYTHONPATH": str(REPO_ROOT)}
    full["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=3600)


@pytest.fixture(scope="session")
def serving_image(base_image: str, tmp_path_factory) -> Callable[..., BuiltImage]:
    """Factory: ``serving_image("1.10")`` (model mounted at run time) or ``bake=True``."""
    built: Dict[tuple, BuiltImage] = {}

    def _get(line: str, bake: bool = False) -> BuiltImage:
        key = (line, bake)
        if key not in built:
            model = get_logged_model(line, "binary")
            tag = f"dai-mlflow-test-{line.replace('.', '-')}{'-baked' if bake else ''}:latest"
            out = tmp_path_factory.mktemp(f"context-{line}")
            extra = ["--output-dir", str(out / "context")] + (["--bake-model"] if bake else [])
            started = time.monotonic()
            # The builder's environment holds a license: nothing of it may reach the image.
            proc = build_cli(model, tag, base_image, extra, model.license_env)
            seconds = time.monotonic() - started
            assert proc.returncode == 0, proc.stderr[-3000:]
            fields = dict(ln.split("=", 1) for ln in proc.stdout.splitlines() if "=" in ln)
            print(f"image {tag}: {fields.get('size_mb')} MB, built in {seconds:.0f}s")
            built[key] = BuiltImage(
                tag, line, model, bake, seconds, int(float(fields["size_mb"]) * 1e6), proc.stderr
            )
        return built[key]

    return _get


@dataclass
class Container:
    name: str
    url: str

    def logs(self) -> str:
        proc = docker("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def wait_ping(self, timeout: float = 300) -> float:
        """Seconds until ``/ping`` answers 200 (fails with the log when it exits first)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                with urllib.request.urlopen(self.url + "/ping", timeout=5) as resp:
                    if resp.status == 200:
                        return time.monotonic() - started
            except OSError:
                pass
            state = docker("inspect", "-f", "{{.State.Running}}", self.name, check=False)
            assert state.stdout.strip() != "false", self.logs()[-3000:]
            time.sleep(0.2)
        raise AssertionError(
            f"{self.name} did not answer /ping in {timeout}s: {self.logs()[-3000:]}"
        )

    def wait_exit(self, timeout: float = 120) -> int:
        proc = docker("wait", self.name, timeout=timeout)
        return int(proc.stdout.strip())


def post_json(url: str, body: object, timeout: float = 120) -> object:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def license_args(model: LoggedDaiModel, folder: Path) -> List[str]:
    """``docker run`` arguments that give the container the model's license at run time."""
    env = model.license_env
    if "DRIVERLESS_AI_LICENSE_KEY" in env:
        return ["-e", "DRIVERLESS_AI_LICENSE_KEY"]  # the value comes from run()'s environment
    copy = folder / "license.sig"
    shutil.copy2(env["DRIVERLESS_AI_LICENSE_FILE"], copy)
    copy.chmod(0o644)
    return ["-v", f"{copy}:/run/secrets/dai-license.sig:ro",
            "-e", "DRIVERLESS_AI_LICENSE_FILE=/run/secrets/dai-license.sig"]  # fmt: skip


class Containers:
    """Runs containers; :meth:`close` removes all of them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.names: List[str] = []

    def run(
        self,
        image: str,
        args: List[str] = (),  # type: ignore[assignment]
        env: Optional[Dict[str, str]] = None,
    ) -> Container:
        port = free_port()
        name = f"dai-mlflow-test-{port}-{len(self.names)}"
        cmd = ["docker", "run", "-d", "--name", name, "--network", "host", "--read-only",
               "--tmpfs", "/tmp", "-e", f"PORT={port}", "-e", "WORKERS=1",
               *args, image]  # fmt: skip
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        self.names.append(name)
        return Container(name, f"http://127.0.0.1:{port}")

    def close(self) -> None:
        for name in self.names:
            docker("rm", "-f", name, check=False)


@pytest.fixture(scope="module")
def containers(tmp_path_factory) -> Iterator[Containers]:
    pool = Containers(tmp_path_factory.mktemp("containers"))
    try:
        yield pool
    finally:
        pool.close()


def license_strings(model: LoggedDaiModel) -> List[bytes]:
    """The license as bytes, as its base64 and as the key the container is given."""
    raw = model.build.license_path.read_bytes()
    found = [raw.strip(), base64.b64encode(raw)]
    found += [v.encode() for k, v in model.license_env.items() if k.endswith("_KEY")]
    return [s for s in found if s]
