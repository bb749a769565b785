"""Reproducible zips and wheels, written with :mod:`zipfile` only (no setuptools, no pip).

Equal inputs give byte-identical archives on any Python 3.8+ (one timestamp, fixed permissions,
stored entries, sorted, ``RECORD`` last); content is streamed in blocks, so archives of hundreds
of megabytes are never held in memory. See docs/logging.md, "The wheels a model carries".
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Sequence, Tuple, Union

FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = 0o100644
_EXEC_MODE = 0o100755
_DIR_MODE = 0o040755
EXECUTABLE_SUFFIXES = (".sh",)
_BLOCK = 1 << 20
# bytes, a file copied in blocks, or a callable yielding chunks (for generated large content)
Content = Union[bytes, Path, Callable[[], Iterable[bytes]]]


def _info(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=FIXED_DATE_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3
    info.external_attr = mode << 16
    if name.endswith("/"):
        info.external_attr |= 0x10  # MS-DOS directory flag, as zip tools set it
    return info


def _chunks(content: Union[Path, Callable[[], Iterable[bytes]]]) -> Iterable[bytes]:
    if isinstance(content, Path):
        with content.open("rb") as f:
            yield from iter(lambda: f.read(_BLOCK), b"")
    else:
        yield from content()


def _write_entry(zf: zipfile.ZipFile, name: str, content: Content) -> Tuple[str, int]:
    """Write one entry; its RECORD hash and size."""
    if name.endswith("/"):
        mode = _DIR_MODE
    else:
        mode = _EXEC_MODE if name.endswith(EXECUTABLE_SUFFIXES) else _FILE_MODE
    info = _info(name, mode)
    if isinstance(content, bytes):
        zf.writestr(info, content)
        return _record_hash(hashlib.sha256(content).digest()), len(content)
    if isinstance(content, Path):
        info.file_size = content.stat().st_size  # lets zipfile pick zip64 for a huge file
    digest, size = hashlib.sha256(), 0
    with zf.open(info, "w") as out:
        for chunk in _chunks(content):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    return _record_hash(digest.digest()), size


def write_zip(path: Path, files: Mapping[str, Content], folders: Iterable[str] = ()) -> Path:
    """Write ``files`` (archive name -> content) and empty ``folders`` (names ending in ``/``)."""
    entries: Dict[str, Content] = dict.fromkeys(folders, b"")
    entries.update(files)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name in sorted(entries):
            _write_entry(zf, name, entries[name])
    return path


def _record_hash(digest: bytes) -> str:
    raw = base64.urlsafe_b64encode(digest).rstrip(b"=")
    return "sha256=" + raw.decode("ascii")


def wheel_file_name(project: str, version: str, tag: str) -> str:
    """PEP 427 file name; ``project`` is already normalised (underscores, no dashes)."""
    return f"{project}-{version}-{tag}.whl"


def build_wheel(
    out_dir: Path,
    project: str,
    version: str,
    tag: str,
    files: Mapping[str, Content],
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
        files: archive name -> content (packages, modules, ``.pth`` files).
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
    meta: Dict[str, bytes] = {
        f"{dist_info}/METADATA": ("\n".join(metadata) + "\n\n" + summary + "\n").encode(),
        f"{dist_info}/WHEEL": ("\n".join(wheel) + "\n").encode(),
    }
    top_level = {n.split("/")[0].rsplit(".py", 1)[0] for n in files if not n.endswith(".pth")}
    meta[f"{dist_info}/top_level.txt"] = ("\n".join(sorted(top_level)) + "\n").encode()
    if entry_points:
        meta[f"{dist_info}/entry_points.txt"] = entry_points.encode()
    record_name = f"{dist_info}/RECORD"
    record: List[str] = []
    path = out_dir / wheel_file_name(project, version, tag)
    out_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        # Payload first and RECORD last: the hashes of streamed files are known once written.
        for name in [*sorted(files), *sorted(meta)]:
            digest, size = _write_entry(zf, name, files[name] if name in files else meta[name])
            record.append(f"{name},{digest},{size}")
        record.append(f"{record_name},,")
        _write_entry(zf, record_name, ("\n".join(record) + "\n").encode())
    return path
