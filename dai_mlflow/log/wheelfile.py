"""Reproducible zips and wheels, written with :mod:`zipfile` only (no setuptools, no pip).

Used for the small wheels every logged model carries (:mod:`dai_mlflow.log.model_wheels`) and for
the stand-in pipeline's wheels and ``scorer.zip`` (:mod:`dai_mlflow.standin`).

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
    license_text: str = "Apache-2.0",
    entry_points: str = "",
    generator: str = "dai-mlflow (zipfile)",
    platform: str = "",
) -> Path:
    """Write a wheel of ``files`` (archive name -> bytes) into ``out_dir``; return its path.

    Args:
        out_dir: folder the wheel is written to (created).
        project: normalised project name (underscores).
        version: the version.
        tag: ``py3-none-any`` or a platform tag.
        files: archive name -> bytes (packages, modules, ``.pth`` files).
        summary: the one-line summary in METADATA.
        requires_dist: ``Requires-Dist`` lines.
        requires_python: ``Requires-Python`` (none when empty).
        root_is_purelib: the WHEEL file's ``Root-Is-Purelib``.
        license_text: the METADATA ``License``.
        entry_points: the text of ``entry_points.txt`` (none when empty).
        generator: the WHEEL file's ``Generator``.
        platform: the METADATA ``Platform`` (none when empty).
    """
    dist_info = f"{project}-{version}.dist-info"
    metadata = [
        "Metadata-Version: 2.1",
        f"Name: {project}",
        f"Version: {version}",
        f"Summary: {summary}",
        f"License: {license_text}",
    ]
    if platform:
        metadata.append(f"Platform: {platform}")
    if requires_python:
        metadata.append(f"Requires-Python: {requires_python}")
    metadata += [f"Requires-Dist: {req}" for req in requires_dist]
    wheel = [
        "Wheel-Version: 1.0",
        f"Generator: {generator}",
        f"Root-Is-Purelib: {'true' if root_is_purelib else 'false'}",
        f"Tag: {tag}",
    ]
    content = dict(files)
    content[f"{dist_info}/METADATA"] = ("\n".join(metadata) + "\n\n" + summary + "\n").encode()
    content[f"{dist_info}/WHEEL"] = ("\n".join(wheel) + "\n").encode()
    top_level = {n.split("/")[0].rsplit(".py", 1)[0] for n in files if not n.endswith(".pth")}
    content[f"{dist_info}/top_level.txt"] = ("\n".join(sorted(top_level)) + "\n").encode()
    if entry_points:
        content[f"{dist_info}/entry_points.txt"] = entry_points.encode()
    record_name = f"{dist_info}/RECORD"
    record = [f"{name},{_record_hash(data)},{len(data)}" for name, data in sorted(content.items())]
    record.append(f"{record_name},,")
    content[record_name] = ("\n".join(record) + "\n").encode()
    return write_zip(out_dir / wheel_file_name(project, version, tag), content)
