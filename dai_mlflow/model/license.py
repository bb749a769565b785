"""Find the Driverless AI license at scoring time, without ever copying it.

Order: ``DRIVERLESS_AI_LICENSE_KEY`` (the key itself), ``DRIVERLESS_AI_LICENSE_FILE`` (a path),
then ``~/.driverlessai/license.sig`` (README.md, "License"). A :class:`LicenseSource` says
*where* the license is, never what it is, so it can be printed and logged. Model-side module:
stdlib only, Python 3.8-safe.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from dai_mlflow.errors import LicenseNotFoundError

LICENSE_KEY_ENV = "DRIVERLESS_AI_LICENSE_KEY"
LICENSE_FILE_ENV = "DRIVERLESS_AI_LICENSE_FILE"
DEFAULT_LICENSE_RELPATH = Path(".driverlessai") / "license.sig"


@dataclass(frozen=True)
class LicenseSource:
    """Where the license comes from: ``kind`` is ``key`` (env var) or ``file`` (a path)."""

    kind: str
    where: str

    def describe(self) -> str:
        """Human-readable origin; never contains the key."""
        return f"${LICENSE_KEY_ENV}" if self.kind == "key" else self.where


def default_license_path(home: Optional[Path] = None) -> Path:
    """``~/.driverlessai/license.sig`` for ``home`` (the user's home by default)."""
    return (home or Path.home()) / DEFAULT_LICENSE_RELPATH


def find_license(
    environ: Optional[Mapping[str, str]] = None, home: Optional[Path] = None
) -> LicenseSource:
    """Locate the license in the documented order.

    Args:
        environ: environment to read (``os.environ`` by default).
        home: home folder for the default file (the user's home by default).

    Returns:
        Where the license is.

    Raises:
        LicenseNotFoundError: none of the three places holds a license, or
            ``DRIVERLESS_AI_LICENSE_FILE`` names a missing file.
    """
    env = os.environ if environ is None else environ
    if env.get(LICENSE_KEY_ENV, "").strip():
        return LicenseSource("key", LICENSE_KEY_ENV)
    file_var = env.get(LICENSE_FILE_ENV, "").strip()
    if file_var:
        # Absolute now: the scorer runs in its own working folder, where a relative path breaks.
        path = Path(os.path.abspath(Path(file_var).expanduser()))
        if not path.is_file():
            raise LicenseNotFoundError(
                f"{LICENSE_FILE_ENV}={path} does not exist; point it at your license.sig or "
                f"set {LICENSE_KEY_ENV}"
            )
        return LicenseSource("file", str(path))
    default = default_license_path(home)
    if default.is_file():
        return LicenseSource("file", str(default))
    raise LicenseNotFoundError(
        f"no Driverless AI license found: set {LICENSE_KEY_ENV} (the key) or {LICENSE_FILE_ENV} "
        f"(a license.sig path), or put the file at {default}"
    )


def export_license_location(source: LicenseSource) -> None:
    """Point ``DRIVERLESS_AI_LICENSE_FILE`` at the found file, as an absolute path.

    Scorers only read the env var, and run in their own working folder: a file found at the
    default place becomes explicit, and a relative path given by the user becomes absolute.
    """
    if source.kind == "file" and os.environ.get(LICENSE_FILE_ENV) != source.where:
        os.environ[LICENSE_FILE_ENV] = source.where


def license_bytes(source: LicenseSource, environ: Optional[Mapping[str, str]] = None) -> bytes:
    """The license's bytes, for leak checks only (never write or log them)."""
    env = os.environ if environ is None else environ
    if source.kind == "key":
        return env.get(LICENSE_KEY_ENV, "").strip().encode()
    return Path(source.where).read_bytes().strip()


REDACTED = "<license>"
_MIN_SECRET_PART = 20


def _secret_parts(environ: Mapping[str, str], home: Optional[Path]) -> list:
    parts = []
    key = environ.get(LICENSE_KEY_ENV, "").strip()
    if key:
        parts.append(key)
    path = environ.get(LICENSE_FILE_ENV, "").strip() or str(default_license_path(home))
    try:
        text = Path(path).expanduser().read_text(errors="replace").strip()
    except OSError:
        text = ""
    if text:
        parts.append(text)
        parts += [ln.strip() for ln in text.splitlines() if len(ln.strip()) >= _MIN_SECRET_PART]
    return sorted(set(parts), key=len, reverse=True)


def redact_license(
    text: str, environ: Optional[Mapping[str, str]] = None, home: Optional[Path] = None
) -> str:
    """``text`` with the license key, the license file's text and its long lines replaced.

    For messages that quote what a scorer printed: they must never carry the license.
    """
    env = os.environ if environ is None else environ
    for part in _secret_parts(env, home):
        text = text.replace(part, REDACTED)
    return text
