"""The deploy endpoint's ``docker`` backend: a version served by a container of its DAI image.

``mlflow run . -e deploy -P target=docker`` runs the local target's sequence
(:mod:`dai_mlflow.lifecycle.deploy`) with one container per version: the image of its DAI
version (:func:`ensure_image`, built once and tagged by content), the version folder mounted
read-only, a read-only container on a loopback port, the license by name or as a read-only file.
Launcher / project env side (Python 3.8-safe). See docs/image.md, "Deploy target".
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Optional, Tuple

from dai_mlflow.envs.processes import answers, free_port
from dai_mlflow.errors import say
from dai_mlflow.image import context as ctx
from dai_mlflow.image.build import BuildRequest, docker, docker_bin, write_build_context

IMAGE_REPO = "dai-mlflow-serving"
BASE_ENV = "DAI_MLFLOW_IMAGE_BASE"
NETWORK_ENV = "DAI_MLFLOW_DOCKER_NETWORK"
LICENSE_MOUNT = "/run/secrets/dai-license.sig"
LICENSE_COPY_LABEL = "dai-mlflow.license-copy"


def image_tag(model_dir: Path) -> str:
    """The tag of the image for this model's DAI version: its version and a hash of what the
    image installs (requirements, the files they name, the entry point) and of its base."""
    facts = ctx.read_model(model_dir)
    digest = hashlib.sha256(os.environ.get(BASE_ENV, "").encode())
    for line in facts.requirements + facts.build_requirements:
        digest.update(line.encode() + b"\n")
        path = ctx.local_path(line)
        if path and (model_dir / path).is_file():
            digest.update((model_dir / path).read_bytes())
    for name in ("entry.py", "context.py"):
        digest.update((Path(__file__).resolve().parent / name).read_bytes())
    return f"{IMAGE_REPO}:{facts.dai_version}-{digest.hexdigest()[:12]}"


def ensure_image(model_dir: Path, work: Path) -> str:
    """The tag of this model's DAI image, built now when the Docker host lacks it.

    Raises:
        ImageBuildError: the build failed.
    """
    tag = image_tag(model_dir)
    if docker("image", "inspect", tag, check=False).returncode == 0:
        say(f"image {tag} is on the Docker host: reused")
        return tag
    say(f"building image {tag} (once per DAI version)")
    request = BuildRequest(model_uri=str(model_dir), tag=tag,
                           base_image=os.environ.get(BASE_ENV, ""))  # fmt: skip
    folder = work / "image-context"
    write_build_context(request, model_dir, folder)
    proc = subprocess.run(
        [docker_bin(), "build", "--network=none", "--force-rm", "-t", tag, str(folder)],
        capture_output=True, text=True, env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )  # fmt: skip
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "rror" in ln]
        raise ctx.ImageBuildError(f"docker build of {tag} failed: {(lines or ['?'])[-1][:300]}")
    return tag


def _license_copy(license_file: Path, folder: Path, name: str) -> Optional[Path]:
    """As root (the container then runs as the image's user), a private copy of the license
    file that user owns, beside the version's folder, to mount and remove with the container;
    else None (the file itself is mounted)."""
    if os.getuid() != 0:
        return None
    copy = folder / f".license-{name}.sig"
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "wb") as out:
        out.write(license_file.read_bytes())
    os.chown(copy, ctx.USER_ID, ctx.USER_ID)
    return copy


def _readable(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))


def start_container(
    image: str, model_dir: Path, folder: Path, route: str, timeout: float = 600
) -> Tuple[str, str]:
    """Run ``image`` with ``model_dir`` mounted; (container name, base URL) once it answers.

    Raises:
        DeployError: it exited or did not answer ``/ping`` within ``timeout``.
    """
    from dai_mlflow.lifecycle.errors import DeployError

    _readable(model_dir)
    port = free_port()
    safe = "".join(c if c.isalnum() or c in "_.-" else "-" for c in route)
    name = f"dai-mlflow-{safe}-{uuid.uuid4().hex[:8]}"
    cmd = ["run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp",
           "-v", f"{model_dir}:/model:ro", "--label", f"dai-mlflow.endpoint={folder}"]  # fmt: skip
    if os.getuid() != 0:  # as root, the image's own non-root user
        cmd += ["--user", f"{os.getuid()}:{os.getgid()}"]
    if os.environ.get(NETWORK_ENV) == "host":
        cmd += ["--network", "host", "-e", f"PORT={port}"]
    else:
        cmd += ["-p", f"127.0.0.1:{port}:{ctx.PORT}"]
    for var in ("WORKERS", "DRIVERLESS_AI_LICENSE_KEY"):
        if os.environ.get(var):
            cmd += ["-e", var]  # the value comes from this environment, not the command line
    license_file = os.environ.get("DRIVERLESS_AI_LICENSE_FILE", "")
    copy = None
    if not os.environ.get("DRIVERLESS_AI_LICENSE_KEY") and license_file:
        given = Path(license_file).resolve()
        copy = _license_copy(given, folder, name)
        if copy:
            cmd += ["--label", f"{LICENSE_COPY_LABEL}={copy}"]
        cmd += ["-v", f"{copy or given}:{LICENSE_MOUNT}:ro",
                "-e", f"DRIVERLESS_AI_LICENSE_FILE={LICENSE_MOUNT}"]  # fmt: skip
    try:
        docker(*cmd, image)
    except ctx.ImageBuildError:
        if copy:
            copy.unlink(missing_ok=True)
        raise
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers(url + "/ping"):
            return name, url
        running = docker("inspect", "-f", "{{.State.Running}}", name, check=False)
        if running.stdout.strip() != "true":
            log = last_log_line(name)
            stop_container(name)
            raise DeployError(f"its container exited before serving: {log}")
        time.sleep(0.25)
    log = last_log_line(name)
    stop_container(name)
    raise DeployError(f"its container did not answer within {timeout:.0f}s: {log}")


def last_log_line(name: str) -> str:
    proc = docker("logs", "--tail", "40", name, check=False)
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "rror" in ln]
    return ((errors or lines or ["(no log)"])[-1])[:300]


def stop_container(name: Optional[str], grace: int = 30) -> None:
    """Stop (SIGTERM, requests in flight finish) and remove a container; no-op when gone."""
    if name:
        label = '{{index .Config.Labels "' + LICENSE_COPY_LABEL + '"}}'
        copy = docker("inspect", "-f", label, name, check=False).stdout.strip()
        docker("stop", "-t", str(grace), name, check=False, timeout=grace + 60)
        docker("rm", "-f", name, check=False, timeout=120)
        if Path(copy).name.startswith(".license-"):
            Path(copy).unlink(missing_ok=True)


def start_servers(
    model_dir: Path, folder: Path, model_name: str, version: str, model_uri: str, rpc: bool
) -> Any:
    """The deploy endpoint's servers of one version, as a container (a ``deploy.state.Servers``).

    Raises:
        DeployError: the image could not be built or the container did not come up.
    """
    from dai_mlflow.lifecycle.deploy.state import Servers
    from dai_mlflow.lifecycle.errors import DeployError

    try:
        image = ensure_image(model_dir, folder)
        name, url = start_container(image, model_dir, folder, f"{model_name}-v{version}")
    except ctx.ImageBuildError as e:  # docker itself failed (no daemon, a bad image, ...)
        raise DeployError(str(e)) from e
    return Servers(
        model_name=model_name,
        version=version,
        model_uri=model_uri,
        folder=str(folder),
        invocations=url,
        rpc=url if rpc else None,
        container=name,
    )
