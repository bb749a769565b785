"""Build, reuse and rebuild the project's virtualenvs (``venvs/*`` and test envs).

A :class:`VenvSpec`'s key hashes the exact interpreter, every requirement line and the bytes of
every local file they name (MLflow keys by text only: MLflow issue #10525). :func:`ensure_venv`
reuses a venv whose stamp matches, rebuilds it when the key changed and removes a half-built
one; its steps mirror MLflow's ``_create_virtualenv``. ``launchers/*.sh`` call its CLI. Stdlib
only (PyYAML to read YAML), so the host Python runs it. See README.md, "The virtualenvs".
Over 400 lines: the key, the build steps and the CLI of one builder stay together.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypedDict, Union, cast

from dai_mlflow.envs.installers import installer_environ, redact_credentials
from dai_mlflow.envs.pythons import Interpreter, find_python
from dai_mlflow.envs.wheelhouse import ensure_wheels
from dai_mlflow.errors import DaiMlflowError, VenvBuildError, report_error, say
from dai_mlflow.model.experiment import file_sha256

STAMP_FILE_NAME = ".dai-mlflow-venv.json"
PYTHON_ENV_FILE_NAME = "python_env.yaml"
REQUIREMENTS_FILE_NAME = "requirements.txt"  # beside it in a model folder
INSTALLERS = ("pip", "uv")
# pyspark releases that support a given Python minor (4.x dropped Python 3.8).
PYSPARK_FOR_PYTHON = {"3.8": "pyspark==3.5.8", "3.9": "pyspark==3.5.8"}
PYSPARK_DEFAULT = "pyspark==4.3.0"

Progress = Callable[[str], None]
# How installers report a full disk (pip, venv: Python's OSError; uv: Rust's "os error 28").
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_WORDS = ("no space left on device", "disk quota exceeded", "os error 28", "errno 28")


class NoSpaceError(VenvBuildError):
    """The disk filled while a venv was built; the half-built venv was removed."""

    def __init__(
        self, dest: str, step: str, where: str = "", fix: str = "free space there"
    ) -> None:
        self.dest = dest
        self.step = step
        DaiMlflowError.__init__(
            self,
            f"no space left on device while building {where or dest} ({step}): {fix} "
            "(nothing was left behind)",
        )


def _is_no_space(output: str) -> bool:
    low = output.lower()
    return any(word in low for word in _NO_SPACE_WORDS)


@dataclass(frozen=True)
class VenvSpec:
    """What a venv must contain.

    Attributes:
        python: requested version, ``3.8`` or ``3.8.18``.
        dependencies: requirement lines (pins, wheel paths, ``-r``/``-c`` lines).
        build_dependencies: installed first, in their own step (as python_env.yaml's).
        base_dir: folder against which relative paths in the lines resolve.
        installer: ``pip`` (exactly what MLflow's virtualenv manager does) or ``uv`` (fast).
        site_paths: folders added to the venv's ``sys.path`` through a ``.pth`` file.
    """

    python: str
    dependencies: Tuple[str, ...]
    build_dependencies: Tuple[str, ...] = ()
    base_dir: Path = field(default_factory=Path.cwd)
    installer: str = "pip"
    site_paths: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.installer not in INSTALLERS:
            raise DaiMlflowError(
                f"unknown installer {self.installer!r}; use one of {', '.join(INSTALLERS)}"
            )
        if not self.python or not self.python[0].isdigit():
            raise DaiMlflowError(
                f"python version must look like 3.8 or 3.8.18, got {self.python!r}"
            )

    @classmethod
    def from_python_env(
        cls,
        python_env_file: Path,
        extra_dependencies: Sequence[str] = (),
        installer: str = "pip",
    ) -> VenvSpec:
        """Read an MLflow ``python_env.yaml``; relative paths resolve against its folder."""
        data = load_python_env(python_env_file)
        return cls(
            python=data["python"],
            build_dependencies=tuple(data.get("build_dependencies") or ()),
            dependencies=tuple(data.get("dependencies") or ()) + tuple(extra_dependencies),
            base_dir=python_env_file.resolve().parent,
            installer=installer,
        )


class _PythonEnvPython(TypedDict):
    python: str


class PythonEnv(_PythonEnvPython, total=False):
    """An MLflow ``python_env.yaml``, as :func:`load_python_env` checked it."""

    build_dependencies: Optional[List[str]]
    dependencies: Optional[List[str]]


def load_python_env(path: Path) -> PythonEnv:
    """Parse and validate an MLflow python_env.yaml the way MLflow's ``_PythonEnv`` does."""
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - the launcher venv has PyYAML
        raise DaiMlflowError(
            "reading python_env.yaml needs PyYAML; run this from venvs/launcher (make venvs)"
        ) from e
    if not path.is_file():
        raise DaiMlflowError(f"{path} not found; pass the python_env.yaml of the project or model")
    data = yaml.safe_load(path.read_text()) or {}
    allowed = {"python", "build_dependencies", "dependencies"}
    unknown = set(data) - allowed
    if unknown:
        raise DaiMlflowError(
            f"{path}: unknown keys {sorted(unknown)}; MLflow accepts only {sorted(allowed)}"
        )
    if not isinstance(data.get("python"), str):
        raise DaiMlflowError(f'{path}: `python` must be a quoted version string, e.g. "3.8.18"')
    for key in ("build_dependencies", "dependencies"):
        if data.get(key) is not None and not isinstance(data[key], list):
            raise DaiMlflowError(f"{path}: `{key}` must be a list")
    return cast("PythonEnv", data)


def _local_files(lines: Sequence[str], base_dir: Path) -> List[Path]:
    """Local files named by requirement lines (wheels, sdists, -r/-c files), recursively."""
    found: List[Path] = []
    for raw in lines:
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        nested = None
        for flag in ("-r", "--requirement", "-c", "--constraint"):
            if line.startswith(flag + " ") or line.startswith(flag + "="):
                nested = line[len(flag) + 1 :].strip()
        target = nested or line
        if nested is None and not (
            target.startswith((".", "/")) or target.endswith((".whl", ".tar.gz", ".zip"))
        ):
            continue
        path = (base_dir / target).resolve()
        if path.is_file():
            found.append(path)
            if nested is not None:
                found.extend(_local_files(path.read_text().splitlines(), path.parent))
    return found


def spec_key(spec: VenvSpec, interpreter: Interpreter) -> str:
    """Hash of everything that determines the venv's contents."""
    files = _local_files(spec.build_dependencies + spec.dependencies, spec.base_dir)
    payload = {
        "python": interpreter.version,
        "installer": spec.installer,
        "build_dependencies": list(spec.build_dependencies),
        "dependencies": list(spec.dependencies),
        "files": sorted((p.name, file_sha256(p)) for p in files),
        "site_paths": list(spec.site_paths),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def venv_python(dest: Path) -> Path:
    """The interpreter of the venv at ``dest``."""
    return dest / "bin" / "python"


def read_stamp(dest: Path) -> Optional[Dict[str, str]]:
    """The stamp of a fully built venv, or None."""
    try:
        return json.loads((dest / STAMP_FILE_NAME).read_text())
    except (OSError, ValueError):
        return None


def is_current(dest: Path, key: str) -> bool:
    """True when ``dest`` is a finished venv built for ``key`` whose Python still runs."""
    stamp = read_stamp(dest)
    if not stamp or stamp.get("key") != key:
        return False
    try:
        return subprocess.run([str(venv_python(dest)), "-c", ""], timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        # Slow (a loaded machine), not broken: a rebuild would delete a venv others may be using.
        return True
    except OSError:
        return False


def find_uv() -> Optional[str]:
    """The uv next to this interpreter (a venv with uv), else uv on PATH, else None."""
    sibling = Path(sys.executable).parent / "uv"
    if sibling.is_file():
        return str(sibling)
    return shutil.which("uv")


def _run(
    cmd: Sequence[Union[str, Path]], step: str, dest: Path, cwd: Optional[Path], quiet: bool
) -> None:
    """Run one build step (no license in its environment); stream its output unless quiet."""
    try:
        proc = subprocess.run(
            [str(c) for c in cmd],
            cwd=str(cwd) if cwd else None,
            env=installer_environ(),
            stdout=subprocess.PIPE if quiet else None,
            stderr=subprocess.STDOUT if quiet else None,
            text=True,
        )
    except OSError as e:
        raise VenvBuildError(str(dest), step, str(e)) from e
    if proc.returncode != 0:
        if (quiet and _is_no_space(proc.stdout or "")) or _nearly_full(dest.parent):
            raise NoSpaceError(str(dest), step)
        tail = ""
        if quiet and proc.stdout:
            lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
            errors = [ln for ln in lines if "error" in ln.lower()] or lines
            tail = errors[-1].strip()
        detail = tail or f"exit code {proc.returncode}, see the output above"
        raise VenvBuildError(str(dest), step, redact_credentials(detail))


def _nearly_full(folder: Path) -> bool:
    """Whether ``folder``'s file system has (almost) no room left: how a failed step whose
    output was streamed, not captured, is still told apart as a full disk."""
    try:
        return shutil.disk_usage(str(folder)).free < (1 << 20)
    except OSError:
        return False


def _install_group(
    spec: VenvSpec,
    dest: Path,
    lines: Sequence[str],
    uv: Optional[str],
    quiet: bool,
    step: str,
    wheels: Optional[Path] = None,
) -> None:
    """Install one group of lines the way MLflow does: from a temp dir mirroring base_dir.

    ``wheels``: a folder passed with ``--find-links`` (see :mod:`dai_mlflow.envs.wheelhouse`).
    """
    with tempfile.TemporaryDirectory(prefix="dai-mlflow-req-") as tmp:
        for item in os.listdir(spec.base_dir):
            os.symlink(spec.base_dir / item, Path(tmp) / item)
        req = Path(tmp) / "requirements.dai-mlflow.txt"
        req.write_text("\n".join(lines) + "\n")
        cmd: List[Union[str, Path]]
        if spec.installer == "uv" and uv:
            cmd = [uv, "pip", "install", "--python", venv_python(dest), "-r", req.name]
        else:
            cmd = [venv_python(dest), "-m", "pip", "install", "-r", req.name]
            if quiet:
                cmd.append("--quiet")
        if wheels is not None:
            cmd += ["--find-links", str(wheels)]
        _run(cmd, step, dest, Path(tmp), quiet)


def ensure_venv(
    spec: VenvSpec,
    dest: Path,
    quiet: bool = False,
    progress: Progress = say,
    key: Optional[str] = None,
) -> Tuple[Path, bool]:
    """Make ``dest`` a venv that satisfies ``spec``, reusing it when its key is unchanged.

    Args:
        spec: what the venv must contain.
        dest: the venv folder.
        quiet: capture installer output (tests) instead of streaming it (progress for users).
        progress: receives one line per step.
        key: ``spec_key(spec, ...)`` when the caller has it already (it hashes every wheel the
            spec names, which can be a gigabyte).

    Returns:
        (python executable of the venv, True if it was built now / False if reused).

    Raises:
        PythonNotFoundError: the requested Python is not installed locally.
        NoSpaceError: the disk filled; ``dest`` no longer exists.
        VenvBuildError: a step failed; ``dest`` no longer exists.
    """
    dest = Path(os.path.abspath(dest))
    interpreter = find_python(spec.python)
    key = key or spec_key(spec, interpreter)
    if is_current(dest, key):
        progress(f"[venv] {dest} is up to date (key {key}, Python {interpreter.version})")
        return venv_python(dest), False
    if dest.exists():
        progress(f"[venv] {dest} is stale or incomplete: rebuilding")
        shutil.rmtree(dest)
    uv = find_uv() if spec.installer == "uv" else None
    groups = [g for g in (spec.build_dependencies, spec.dependencies) if g]
    total = 1 + len(groups) + (1 if spec.installer == "uv" and not uv else 0)
    started = time.monotonic()
    n = 0

    def _step(label: str) -> str:
        nonlocal n
        n += 1
        progress(
            f"[venv] {dest.name}: step {n}/{total}: {label} ({time.monotonic() - started:.0f}s)"
        )
        return label

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        label = _step(f"creating venv with Python {interpreter.version} ({interpreter.executable})")
        _run([interpreter.executable, "-m", "venv", dest], label, dest, None, quiet)
        if spec.installer == "uv" and not uv:
            label = _step("bootstrapping uv with pip")
            _run([venv_python(dest), "-m", "pip", "install", "-q", "uv"], label, dest, None, quiet)
            uv = str(dest / "bin" / "uv")
        for group in groups:
            what = "build dependencies" if group is spec.build_dependencies else "dependencies"
            wheels = ensure_wheels(group, str(interpreter.executable), progress, quiet)
            label = _step(f"installing {len(group)} {what} with {spec.installer}")
            _install_group(spec, dest, group, uv, quiet, label, wheels)
        if spec.site_paths:
            _write_pth(dest, spec.site_paths)
        stamp = {"key": key, "python": interpreter.version, "spec": _spec_summary(spec)}
        (dest / STAMP_FILE_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
    except OSError as e:
        shutil.rmtree(dest, ignore_errors=True)
        if e.errno in _NO_SPACE_ERRNOS:
            raise NoSpaceError(str(dest), "writing the venv") from e
        raise
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    progress(f"[venv] {dest} built in {time.monotonic() - started:.0f}s (key {key})")
    return venv_python(dest), True


def _write_pth(dest: Path, site_paths: Sequence[str]) -> None:
    out = subprocess.run(
        [str(venv_python(dest)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    (Path(out.stdout.strip()) / "dai_mlflow_checkout.pth").write_text("\n".join(site_paths) + "\n")


def _spec_summary(spec: VenvSpec) -> Dict[str, object]:
    return {
        "python": spec.python,
        "installer": spec.installer,
        "build_dependencies": list(spec.build_dependencies),
        "dependencies": list(spec.dependencies),
        "base_dir": str(spec.base_dir),
    }


def pyspark_requirement(python_version: str) -> str:
    """A pyspark pin that supports ``python_version`` (3.5.x for 3.8, 4.x for 3.10+)."""
    major_minor = ".".join(python_version.split(".")[:2])
    return PYSPARK_FOR_PYTHON.get(major_minor, PYSPARK_DEFAULT)


def read_requirement_lines(path: Path) -> List[str]:
    """Non-empty, non-comment lines of a requirements file."""
    if not path.is_file():
        raise DaiMlflowError(f"{path} not found; pass the requirements.txt of the model")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _cli(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dai_mlflow.envs.venvs",
        description="Build or reuse a project venv keyed by a hash of its spec.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("requirements", help="venv from a Python version + requirements file")
    p.add_argument("--dest", type=Path, required=True)
    p.add_argument("--python", required=True, help="e.g. 3.11 or 3.11.7")
    p.add_argument("--requirements", type=Path, required=True)
    p.add_argument("--installer", choices=INSTALLERS, default="uv")
    p.add_argument("--site-path", action="append", default=[], help="add a folder to sys.path")
    p = sub.add_parser("python-env", help="venv from an MLflow python_env.yaml (as mlflow run)")
    p.add_argument("--dest", type=Path, required=True)
    p.add_argument("--python-env", type=Path, required=True)
    p.add_argument("--installer", choices=INSTALLERS, default="pip")
    for name in ("requirements", "python-env"):
        sub.choices[name].add_argument("--quiet", action="store_true", help="hide installer output")
    args = parser.parse_args(argv)
    try:
        spec = _spec_from_args(args)
        _, built = ensure_venv(spec, args.dest, quiet=args.quiet)
    except DaiMlflowError as e:
        return report_error(e)
    state = "built" if built else "reused"
    print(f"{state} {args.dest} -> activate with: source {args.dest}/bin/activate")
    return 0


def _spec_from_args(args: argparse.Namespace) -> VenvSpec:
    if args.command == "requirements":
        return VenvSpec(
            python=args.python,
            dependencies=tuple(read_requirement_lines(args.requirements)),
            base_dir=args.requirements.resolve().parent,
            installer=args.installer,
            site_paths=tuple(str(Path(p).resolve()) for p in args.site_path),
        )
    return VenvSpec.from_python_env(args.python_env, installer=args.installer)


if __name__ == "__main__":
    sys.exit(_cli())
