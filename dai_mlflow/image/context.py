"""The build context of a serving image: everything ``docker build --network=none`` needs.

A folder with the ``Dockerfile``, the model env's requirements and every wheel they install
(fetched on this machine beforehand with the user's pip settings, cached per requirements), a
local CPython build when the base image has none, the CA bundle, ``bin/`` (entry point, JSON-RPC
script) and, with ``--bake-model``, the model. Launcher side (Python >= 3.10). See docs/image.md,
"How it builds with no network".
Over 400 lines: every part of the build context and the Dockerfile that uses it, together.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from dai_mlflow.envs.pythons import Interpreter
from dai_mlflow.envs.venvs import (
    PYTHON_ENV_FILE_NAME,
    REQUIREMENTS_FILE_NAME,
    load_python_env,
    read_requirement_lines,
)
from dai_mlflow.errors import DaiMlflowError
from dai_mlflow.model.experiment import file_sha256

DOCKERFILE = "Dockerfile"
IMAGE_ROOT = "/opt/dai-mlflow"
USER_ID = 10001
PORT = 8080
WRITTEN_BY = "written by `dai-mlflow image build"
# Parts of a CPython build that serving never uses (tests, Tk, headers, the static library).
_PYTHON_SKIP = ("test", "tkinter", "idlelib", "turtledemo", "lib2to3/tests")
_HOST_LIB_DIRS = ("/lib", "/usr/lib", "/lib64", "/usr/lib64", "/usr/local/lib")

Progress = Callable[[str], None]


class ImageBuildError(DaiMlflowError):
    """The image cannot be built; the message says how to fix it."""


@dataclass(frozen=True)
class Network:
    """How this machine reaches the package index (pip's own settings apply too)."""

    index_url: str = ""
    http_proxy: str = ""
    https_proxy: str = ""
    no_proxy: str = ""
    ca_certs: Optional[Path] = None

    def pip_env(self, bundle: Optional[Path]) -> Dict[str, str]:
        env = dict(os.environ)
        for name, value in (("http_proxy", self.http_proxy), ("https_proxy", self.https_proxy),
                            ("no_proxy", self.no_proxy)):  # fmt: skip
            if value:
                env[name] = env[name.upper()] = value
        if bundle is not None:
            env["PIP_CERT"] = str(bundle)
        env["PIP_NO_INPUT"] = "1"
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        return env


@dataclass(frozen=True)
class ModelFacts:
    """What the image is built for, read from the model folder."""

    dai_version: str
    python: str
    build_requirements: Tuple[str, ...]
    requirements: Tuple[str, ...]
    experiment_wheel: str

    @property
    def minor(self) -> str:
        return ".".join(self.python.split(".")[:2])


@dataclass
class Context:
    """A written build context."""

    folder: Path
    facts: ModelFacts
    python_from_host: bool
    copied_libs: List[str] = field(default_factory=list)
    wheels: int = 0


def read_model(model_dir: Path) -> ModelFacts:
    """The DAI version, Python and requirements of a dai-mlflow model folder.

    Raises:
        ImageBuildError: the folder is not a model logged by dai-mlflow.
    """
    import yaml

    mlmodel = model_dir / "MLmodel"
    for path in (mlmodel, model_dir / PYTHON_ENV_FILE_NAME, model_dir / REQUIREMENTS_FILE_NAME):
        if not path.is_file():
            raise ImageBuildError(f"{model_dir} has no {path.name}; is it a dai-mlflow model?")
    meta = (yaml.safe_load(mlmodel.read_text()) or {}).get("metadata") or {}
    if not meta.get("scorer_module"):
        raise ImageBuildError(f"{model_dir} is not a dai-mlflow model (no scorer in MLmodel)")
    env = load_python_env(model_dir / PYTHON_ENV_FILE_NAME)
    wheel = str(meta.get("experiment_wheel") or "")
    lines = read_requirement_lines(model_dir / REQUIREMENTS_FILE_NAME)
    # The experiment wheel is the model's own code: it is loaded from the model at start-up.
    lines = [ln for ln in lines if not (wheel and ln.endswith(wheel))]
    return ModelFacts(
        dai_version=str(meta.get("dai_version") or "unknown"),
        python=str(env["python"]),
        build_requirements=tuple(str(d) for d in env.get("build_dependencies") or ()),
        requirements=tuple(lines),
        experiment_wheel=wheel,
    )


def local_path(line: str) -> Optional[str]:
    """The path of a requirement line that names a local file, else None."""
    target = line.split(" #")[0].strip()
    if target.startswith((".", "/")) or target.endswith((".whl", ".tar.gz", ".zip")):
        return target
    return None


def write_requirements(model_dir: Path, facts: ModelFacts, folder: Path) -> List[Path]:
    """``requirements/`` of the context; the local files the requirements name (wheels).

    Local wheels are named by file name (``/build/wheels/<file>`` in the image), ``-c``/``-r``
    files are copied beside.
    """
    req_dir = folder / "requirements"
    req_dir.mkdir(parents=True)
    local: List[Path] = []
    lines: List[str] = []
    for line in facts.requirements:
        for flag in ("-c", "-r"):
            if line.startswith(flag + " "):
                name = Path(line[3:].strip()).name
                shutil.copy2(model_dir / line[3:].strip(), req_dir / name)
                lines.append(f"{flag} {name}")
                break
        else:
            path = local_path(line)
            if path is None:
                lines.append(line)
                continue
            source = (model_dir / path).resolve()
            if not source.is_file():
                raise ImageBuildError(f"{model_dir}: requirement {line!r} names a missing file")
            local.append(source)
            lines.append(f"/build/wheels/{source.name}")
    (req_dir / "model.txt").write_text("\n".join(lines) + "\n")
    (req_dir / "build.txt").write_text("\n".join(facts.build_requirements) + "\n")
    return local


def wheels_cache_root() -> Path:
    """``$DAI_MLFLOW_IMAGE_WHEELS``, else ``~/.cache/dai-mlflow/image-wheels``."""
    explicit = os.environ.get("DAI_MLFLOW_IMAGE_WHEELS")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "dai-mlflow" / "image-wheels"


def _wheels_key(folder: Path, local: Sequence[Path], python: Interpreter, net: Network) -> str:
    req_dir = folder / "requirements"
    payload = {
        "python": python.version,
        "platform": sys.platform,
        "machine": os.uname().machine,
        "index": net.index_url,
        "files": sorted((p.name, p.read_text()) for p in req_dir.iterdir()),
        "local": sorted((p.name, file_sha256(p)) for p in local),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def fetch_wheels(
    folder: Path,
    local: Sequence[Path],
    python: Interpreter,
    net: Network,
    bundle: Optional[Path],
    progress: Progress,
) -> int:
    """Fill ``folder/wheels`` (from the cache, or with ``pip wheel`` first); the wheel count.

    Raises:
        ImageBuildError: pip could not fetch or build a requirement.
    """
    from dai_mlflow.envs.locks import file_lock

    dest = folder / "wheels"
    dest.mkdir()
    for path in local:
        shutil.copy2(path, dest / path.name)
    cache = wheels_cache_root() / _wheels_key(folder, local, python, net)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(cache.with_name(cache.name + ".lock")):
        if not (cache / ".complete").is_file():
            shutil.rmtree(cache, ignore_errors=True)
            tmp = cache.with_name(cache.name + ".part")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for path in local:
                shutil.copy2(path, tmp / path.name)
            req = folder / "requirements"
            # Build pins alone: a model's constraints may pin older pip/setuptools (DAI's do).
            for name in ("build.txt", "model.txt"):
                if not (req / name).read_text().strip():
                    continue
                # Beside its -c/-r files (pip reads them relative to it), removed after.
                hosted = req / f".host-{name}"
                hosted.write_text((req / name).read_text().replace("/build/wheels/", f"{tmp}/"))
                progress(f"fetching the wheels of requirements/{name} with pip (Python "
                         f"{python.version})")  # fmt: skip
                cmd = [str(python.executable), "-m", "pip", "wheel", "--quiet", "--wheel-dir",
                       str(tmp), "--find-links", str(tmp), "-r", str(hosted)]  # fmt: skip
                if net.index_url:
                    cmd += ["--index-url", net.index_url]
                try:
                    proc = subprocess.run(
                        cmd, cwd=str(req), env=net.pip_env(bundle), capture_output=True, text=True
                    )
                finally:
                    hosted.unlink()
                if proc.returncode != 0:
                    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")]
                    detail = (lines or proc.stderr.strip().splitlines() or ["no output"])[-1]
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise ImageBuildError(
                        f"pip could not fetch the model's requirements ({detail.strip()}); "
                        "check --index-url, the proxy options or your pip settings"
                    )
            (tmp / ".complete").write_text("")
            tmp.rename(cache)
    count = 0
    for wheel in cache.iterdir():
        if wheel.name.startswith("."):
            continue
        target = dest / wheel.name
        if not target.exists():
            try:
                os.link(wheel, target)
            except OSError:
                shutil.copy2(wheel, target)
        count += 1
    return count


# ------------------------------------------------------------------------------ python
def _ldd(path: Path) -> Dict[str, str]:
    """soname -> resolved path of the shared libraries ``path`` loads (ldd, transitively)."""
    proc = subprocess.run(["ldd", str(path)], capture_output=True, text=True)
    found = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("/"):
            found[parts[0]] = parts[2]
    return found


def copy_python(python: Interpreter, folder: Path, base_libs: Sequence[str]) -> List[str]:
    """Copy the local CPython build into ``folder/python``, and into ``folder/lib`` the shared
    libraries it loads that the base image lacks; the sonames copied.

    Raises:
        ImageBuildError: the interpreter is not a self-contained build (a venv or the system's).
    """
    prefix = Path(python.executable).resolve().parent.parent
    lib = prefix / "lib" / f"python{python.major_minor}"
    if not (lib / "os.py").is_file() or prefix in (Path("/usr"), Path("/")):
        raise ImageBuildError(
            f"{python.executable} is not a self-contained CPython build (pyenv's or uv's); "
            "install one (pyenv install "
            f"{python.version}) or use a --base-image that has Python {python.major_minor}"
        )
    dest = folder / "python"
    skip = {lib / part for part in _PYTHON_SKIP} | {lib / "site-packages"}

    def _ignore(directory: str, names: List[str]) -> List[str]:
        here = Path(directory)
        dropped = [n for n in names if here / n in skip or n.startswith("_tkinter")]
        if here == prefix:
            dropped += [n for n in names if n in ("include", "share", "man")]
        if here == prefix / "lib":
            dropped += [n for n in names if n.endswith(".a") or n == "pkgconfig"]
        if here.name.startswith("config-") and here.parent == lib:
            dropped += [n for n in names if n.endswith(".a")]
        return dropped

    shutil.copytree(prefix, dest, symlinks=True, ignore=_ignore)
    (dest / "lib" / f"python{python.major_minor}" / "site-packages").mkdir(exist_ok=True)
    needed: Dict[str, str] = {}
    for path in [*dest.joinpath("bin").glob("python3*"), *dest.rglob("*.so*")]:
        if path.is_file() and not path.is_symlink():
            needed.update(_ldd(path))
    have = set(base_libs)
    libc = ("libc.so", "libm.so", "libpthread.so", "libdl.so", "librt.so", "libutil.so",
            "ld-linux", "libresolv.so", "libcrypt.so.1")  # fmt: skip
    copied = []
    (folder / "lib").mkdir(exist_ok=True)
    for soname, found in sorted(needed.items()):
        if soname in have or soname.startswith(libc) or str(prefix) in found:
            continue
        if not found.startswith(_HOST_LIB_DIRS):
            continue
        shutil.copy2(os.path.realpath(found), folder / "lib" / soname)
        copied.append(soname)
    return copied


def write_bundle(folder: Path, ca_certs: Optional[Path]) -> Optional[Path]:
    """``certs/bundle.pem``: this machine's trusted CAs plus the PEM files in ``ca_certs``."""
    if ca_certs is None:
        return None
    if not ca_certs.is_dir():
        raise ImageBuildError(f"--ca-certs {ca_certs} is not a folder of PEM certificates")
    pems = sorted(p for p in ca_certs.iterdir() if p.suffix in (".crt", ".pem") and p.is_file())
    if not pems:
        raise ImageBuildError(f"--ca-certs {ca_certs} holds no .crt or .pem file")
    parts = []
    import ssl

    system = ssl.get_default_verify_paths().cafile
    if system and Path(system).is_file():
        parts.append(Path(system).read_text())
    parts += [p.read_text() for p in pems]
    bundle = folder / "certs" / "bundle.pem"
    bundle.parent.mkdir(parents=True)
    bundle.write_text("\n".join(part.strip() for part in parts) + "\n")
    return bundle


def copy_model(model_dir: Path, folder: Path) -> None:
    """``model/``: the model, readable by the container's user."""
    dest = folder / "model"
    shutil.copytree(model_dir, dest, symlinks=False)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


# ------------------------------------------------------------------------------ Dockerfile
def dockerfile(
    base: str, facts: ModelFacts, python_from_host: bool, bake: bool, certs: bool, tag: str
) -> str:
    """The Dockerfile text (works with the legacy builder and BuildKit alike)."""
    root = IMAGE_ROOT
    python = (
        f"{root}/python/bin/python{facts.minor}" if python_from_host else f"python{facts.minor}"
    )
    env_lines = []
    if python_from_host:
        env_lines.append(f"ENV LD_LIBRARY_PATH={root}/python/lib:{root}/lib")
    if certs:
        env_lines.append(
            f"ENV SSL_CERT_FILE={root}/certs/bundle.pem REQUESTS_CA_BUNDLE={root}/certs/bundle.pem"
        )
    env = "\n".join(env_lines)
    host_copy = f"COPY python/ {root}/python/\nCOPY lib/ {root}/lib/\n" if python_from_host else ""
    pip = (f"{root}/env/bin/python -m pip install --no-index --no-cache-dir --find-links "
           "/build/wheels")  # fmt: skip
    lines = [
        f"# Serving image of a Driverless AI {facts.dai_version} model (Python {facts.python}),",
        f"# {WRITTEN_BY} --tag {tag}`. It builds with no network:",
        "#   docker build --network=none -t IMAGE .",
        "# Stage 1 installs the model env from wheels/; stage 2 keeps only the env.",
        f"FROM {base} AS build",
        host_copy.rstrip("\n"),
        env,
        "COPY wheels/ /build/wheels/",
        "COPY requirements/ /build/requirements/",
        f"RUN {python} -m venv {root}/env \\",
        f" && {pip} -r /build/requirements/build.txt \\",
        f" && cd /build/requirements && {pip} -r model.txt",
        f"COPY bin/ {root}/bin/",
        f"RUN {root}/env/bin/python {root}/bin/entry.py --check",
        "",
        f"FROM {base}",
        f"COPY --from=build {root}/env/ {root}/env/",
        f"COPY --from=build {root}/python/ {root}/python/" if python_from_host else "",
        f"COPY --from=build {root}/lib/ {root}/lib/" if python_from_host else "",
        f"COPY bin/ {root}/bin/",
        "COPY certs/ /opt/dai-mlflow/certs/" if certs else "",
        f"COPY model/ {root}/model/" if bake else "",
        env,
        # Everything the servers write goes under /tmp (the scorer writes ./tmp where it runs).
        f"ENV PATH={root}/env/bin:$PATH PYTHONDONTWRITEBYTECODE=1 HOME=/tmp/dai-mlflow/home \\",
        f"    PORT={PORT} DAI_MLFLOW_IMAGE_DAI_VERSION={facts.dai_version}",
        f'LABEL org.opencontainers.image.title="dai-mlflow serving, Driverless AI '
        f'{facts.dai_version}" ai.h2o.dai.version="{facts.dai_version}" '
        f'ai.h2o.dai.python="{facts.python}"',
        f"USER {USER_ID}:{USER_ID}",
        "WORKDIR /tmp",
        f"EXPOSE {PORT}",
        "HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \\",
        f'  CMD ["{root}/env/bin/python", "-c", "import os, urllib.request; '
        "urllib.request.urlopen('http://127.0.0.1:%s/ping' % os.environ.get('PORT', "
        f"'{PORT}'), timeout=4)\"]",
        "STOPSIGNAL SIGTERM",
        f'ENTRYPOINT ["{root}/env/bin/python", "{root}/bin/entry.py"]',
    ]
    return "\n".join(ln for ln in lines if ln) + "\n"


def write_bin(folder: Path) -> None:
    """``bin/``: the entry point and the JSON-RPC server script."""
    from dai_mlflow.serve.server import stage_rpc_script

    here = Path(__file__).resolve().parent
    (folder / "bin").mkdir()
    shutil.copy2(here / "entry.py", folder / "bin" / "entry.py")
    stage_rpc_script(folder / "bin")
