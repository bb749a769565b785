"""Reproducible zips and wheels, written with :mod:`zipfile` only (no setuptools, no pip).

Every entry has the same timestamp (1980-01-01 00:00:00, the earliest a zip can hold), fixed
permissions (0644 files, 0755 folders), Unix as creator, and is *stored* (not deflated, so the
bytes do not depend on the zlib the builder's Python was linked with). Entries are sorted.
Equal inputs therefore give byte-identical archives on any Python 3.8+.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path
from typing import Dict, Iterable, Mapping, Sequence

FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = 0o100644
_EXEC_MODE = 0o100755
_DIR_MODE = 0o040755
EXECUTABLE_SUFFIXES = (".sh",)


def _info(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=FIXED_DATE_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3
    info.external_attr = mode << 16
    if name.endswith("/"):
        info.external_attr |= 0x10  # MS-DOS directory flag, as zip tools set it
    return info


def write_zip(path: Path, files: Mapping[str, bytes], folders: Iterable[str] = ()) -> Path:
    """Write ``files`` (archive name -> bytes) and empty ``folders`` (names ending in ``/``)."""
    entries: Dict[str, bytes] = dict.fromkeys(folders, b"")
    entries.update(files)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name in sorted(entries):
            if name.endswith("/"):
                mode = _DIR_MODE
            else:
                mode = _EXEC_MODE if name.endswith(EXECUTABLE_SUFFIXES) else _FILE_MODE
            zf.writestr(_info(name, mode), entries[name])
    return path


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def wheel_file_name(project: str, version: str, tag: str) -> str:
    """PEP 427 file name; ``project`` is already normalised (underscores, no dashes)."""
    return f"{project}-{version}-{tag}.whl"


def build_wheel(
    out_dir: Path,
    project: str,
    version: str,
    tag: str,
    files: Mapping[str, bytes],
    summary: str,
    requires_dist: Sequence[str] = (),
    requires_python: str = "",
    root_is_purelib: bool = True,
) -> Path:
    """Write a wheel of ``files`` (archive name -> bytes) into ``out_dir``; return its path."""
    dist_info = f"{project}-{version}.dist-info"
    metadata = [
        "Metadata-Version: 2.1",
        f"Name: {project}",
        f"Version: {version}",
        f"Summary: {summary}",
        "License: Proprietary stand-in (dai-mlflow test fixture; not H2O.ai software)",
        "Platform: Linux",
    ]
    if requires_python:
        metadata.append(f"Requires-Python: {requires_python}")
    metadata += [f"Requires-Dist: {req}" for req in requires_dist]
    wheel = [
        "Wheel-Version: 1.0",
        "Generator: dai-mlflow-standin (zipfile)",
        f"Root-Is-Purelib: {'true' if root_is_purelib else 'false'}",
        f"Tag: {tag}",
    ]
    content = dict(files)
    content[f"{dist_info}/METADATA"] = ("\n".join(metadata) + "\n\n" + summary + "\n").encode()
    content[f"{dist_info}/WHEEL"] = ("\n".join(wheel) + "\n").encode()
    content[f"{dist_info}/top_level.txt"] = (
        "\n".join(sorted({n.split("/")[0] for n in files})) + "\n"
    ).encode()
    record_name = f"{dist_info}/RECORD"
    record = [f"{name},{_record_hash(data)},{len(data)}" for name, data in sorted(content.items())]
    record.append(f"{record_name},,")
    content[record_name] = ("\n".join(record) + "\n").encode()
    return write_zip(out_dir / wheel_file_name(project, version, tag), content)
