"""``dai-mlflow image build``: a serving image of a model's DAI version, built offline.

:func:`build_image` downloads the model, writes the build context (:mod:`.context`: wheels
fetched on this machine, the model's Python when the base has none, the Dockerfile) and runs
``docker build --network=none`` with ``docker`` on PATH (or ``$DAI_MLFLOW_DOCKER``), talking to
whatever daemon ``DOCKER_HOST`` names. Launcher side (Python >= 3.10, mlflow 3.x).
See docs/image.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from dai_mlflow.envs.pythons import find_python
from dai_mlflow.errors import PythonNotFoundError, say
from dai_mlflow.image import context as ctx
from dai_mlflow.image.context import ImageBuildError, Network

PYTHON_SOURCES = ("auto", "host", "base")


@dataclass(frozen=True)
class BuildRequest:
    """Inputs of :func:`build_image`."""

    model_uri: str
    tag: str
    base_image: str = ""  # default: python:<the model's minor>-slim-bookworm
    bake_model: bool = False
    python_source: str = "auto"
    output_dir: Optional[Path] = None
    network: Network = field(default_factory=Network)

    def __post_init__(self) -> None:
        if self.python_source not in PYTHON_SOURCES:
            raise ImageBuildError(
                f"--python {self.python_source!r}: use one of {', '.join(PYTHON_SOURCES)}"
            )
        if not self.tag or any(c.isspace() for c in self.tag):
            raise ImageBuildError(f"--tag {self.tag!r} is not an image name (e.g. churn:1)")


@dataclass(frozen=True)
class BuildResult:
    tag: str
    dai_version: str
    python: str
    python_from_host: bool
    context: Path
    seconds: float
    size_bytes: int
    copied_libs: List[str]


def docker_bin() -> str:
    """The Docker client.

    Raises:
        ImageBuildError: there is none.
    """
    found = os.environ.get("DAI_MLFLOW_DOCKER") or shutil.which("docker")
    if not found:
        raise ImageBuildError("docker not found on PATH; install the Docker client")
    return found


def docker(*args: str, check: bool = True, timeout: float = 3600) -> subprocess.CompletedProcess:
    """Run ``docker ARGS``; its output.

    Raises:
        ImageBuildError: it failed (with its last error line) and ``check`` is set.
    """
    proc = subprocess.run([docker_bin(), *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()] or lines or ["no output"]
        raise ImageBuildError(f"docker {args[0]} failed: {errors[-1][:400]}")
    return proc


def check_daemon() -> None:
    """Raises ImageBuildError when no Docker daemon answers."""
    proc = docker("version", "--format", "{{.Server.Version}}", check=False, timeout=60)
    if proc.returncode != 0:
        where = os.environ.get("DOCKER_HOST") or "the default socket"
        raise ImageBuildError(
            f"no Docker daemon answers at {where}: start dockerd, or point DOCKER_HOST at one"
        )


def _in_base(base: str, script: str) -> subprocess.CompletedProcess:
    return docker("run", "--rm", "--network", "none", "--entrypoint", "sh", base, "-c", script,
                  check=False, timeout=300)  # fmt: skip


def base_has_python(base: str, minor: str) -> bool:
    """True when the base image has ``python<minor>`` with the venv module."""
    return _in_base(base, f"python{minor} -c 'import venv, ensurepip'").returncode == 0


def base_libraries(base: str) -> List[str]:
    """Shared library sonames the base image's loader knows (empty when it cannot tell)."""
    proc = _in_base(base, "ldconfig -p 2>/dev/null || /sbin/ldconfig -p")
    return [ln.split()[0] for ln in proc.stdout.splitlines()[1:] if ln.strip()]


def _check_base(base: str) -> None:
    if docker("image", "inspect", base, check=False).returncode != 0:
        raise ImageBuildError(
            f"base image {base} is not on this Docker host; docker pull it (or load it) first, "
            "or pass another --base-image: the build itself never pulls"
        )


def base_for(request: BuildRequest, facts: ctx.ModelFacts) -> str:
    """The base image: the requested one, else ``python:<minor>-slim-bookworm``."""
    return request.base_image or f"python:{facts.minor}-slim-bookworm"


def write_build_context(request: BuildRequest, model_dir: Path, folder: Path) -> ctx.Context:
    """Write the whole build context of ``model_dir`` into the empty ``folder``."""
    facts = ctx.read_model(model_dir)
    base = base_for(request, facts)
    _check_base(base)
    say(f"model: Driverless AI {facts.dai_version}, Python {facts.python}")
    try:
        interp = find_python(facts.python)
    except PythonNotFoundError:
        interp = find_python(facts.minor)
    from_host = request.python_source == "host" or (
        request.python_source == "auto" and not base_has_python(base, facts.minor)
    )
    folder.mkdir(parents=True, exist_ok=True)
    local = ctx.write_requirements(model_dir, facts, folder)
    bundle = ctx.write_bundle(folder, request.network.ca_certs)
    context = ctx.Context(folder, facts, from_host)
    context.wheels = ctx.fetch_wheels(folder, local, interp, request.network, bundle, say)
    if from_host:
        say(f"{base} has no Python {facts.minor}: copying {interp.executable} into the image")
        context.copied_libs = ctx.copy_python(interp, folder, base_libraries(base))
        if context.copied_libs:
            say(f"shared libraries the base lacks, copied: {', '.join(context.copied_libs)}")
    ctx.write_bin(folder)
    if request.bake_model:
        ctx.copy_model(model_dir, folder)
    text = ctx.dockerfile(
        base, facts, from_host, request.bake_model, bundle is not None, request.tag
    )
    (folder / ctx.DOCKERFILE).write_text(text)
    # The image keeps the Dockerfile it was built from, for audits (bin/ is copied in).
    (folder / "bin" / ctx.DOCKERFILE).write_text(text)
    return context


def build_image(request: BuildRequest) -> BuildResult:
    """Build the serving image of ``request.model_uri``'s DAI version.

    Raises:
        ImageBuildError: the model, base image, packages or ``docker build`` failed; one line.
        ModelNotFoundError: the URI does not resolve.
    """
    from dai_mlflow.tracking import download_model

    started = time.monotonic()
    check_daemon()
    scratch = Path(tempfile.mkdtemp(prefix="dai-mlflow-image-"))
    try:
        model_dir = download_model(request.model_uri, scratch / "model")
        folder = request.output_dir or scratch / "context"
        if folder.exists() and any(folder.iterdir()):
            ours = folder / ctx.DOCKERFILE
            if not (ours.is_file() and ctx.WRITTEN_BY in ours.read_text()[:500]):
                raise ImageBuildError(
                    f"--output-dir {folder} is not empty and holds no {ctx.DOCKERFILE} of ours; "
                    "pass an empty or new folder"
                )
            shutil.rmtree(folder)  # our own earlier context: replaced whole
        context = write_build_context(request, model_dir, folder)
        say(f"docker build --network=none -t {request.tag} {folder}")
        proc = subprocess.run(
            [docker_bin(), "build", "--network=none", "--force-rm", "-t", request.tag, str(folder)],
            capture_output=True, text=True, env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )  # fmt: skip
        if proc.returncode != 0:
            lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
            errors = [ln for ln in lines if "rror" in ln] or lines or ["no output"]
            raise ImageBuildError(f"docker build of {request.tag} failed: {errors[-1][:400]}")
        size = int(docker("image", "inspect", "-f", "{{.Size}}", request.tag).stdout.strip())
        if request.output_dir:
            say(f"build context and Dockerfile kept in {folder}")
        else:
            say(
                f"its Dockerfile is in the image: docker run --rm --entrypoint cat {request.tag} "
                f"{ctx.IMAGE_ROOT}/bin/{ctx.DOCKERFILE} (--output-dir DIR keeps the context)"
            )
        return BuildResult(
            tag=request.tag, dai_version=context.facts.dai_version, python=context.facts.python,
            python_from_host=context.python_from_host, context=folder,
            seconds=time.monotonic() - started, size_bytes=size, copied_libs=context.copied_libs,
        )  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
