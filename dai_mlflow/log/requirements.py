"""Turn a DAI pipeline's ``requirements.txt`` into the pip requirements of its MLflow model.

Local wheel lines become ``./artifacts/scoring-pipeline/<wheel>``, excluded projects are dropped,
``mlflow`` is pinned for the pipeline's Python, constraints pass on; anything that cannot be
reproduced or lets the network change the model's code is an error unless allowed, and every
decision is a note. Credentials in URLs are masked. Pure and stdlib only; Python 3.8-safe. See
docs/logging.md, "Requirements".
Over 400 lines: one rule per kind of requirement line, each with its note or error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

from dai_mlflow.envs.installers import has_credentials, redact_credentials
from dai_mlflow.errors import DaiMlflowError
from dai_mlflow.log.pipeline import ScoringPipeline, Wheel
from dai_mlflow.model.experiment import PIPELINE_ARTIFACT  # not model.pyfunc: no mlflow import

ARTIFACT_PREFIX = f"./artifacts/{PIPELINE_ARTIFACT}"
# The newest mlflow release that supports each Python line (2.17.x is the last for 3.8).
MLFLOW_FOR_PYTHON: Dict[str, str] = {
    "3.8": "2.17.2",
    "3.10": "3.17.2",
    "3.11": "3.17.2",
    "3.12": "3.17.2",
    "3.13": "3.17.2",
}
# Packages the model needs only on some Pythons: importlib.resources.files() is 3.9+.
SHIMS_FOR_PYTHON: Dict[str, Tuple[str, ...]] = {"3.8": ("importlib-resources==5.12.0",)}
DEFAULT_EXCLUDE = ("h2o4gpu", "pyorc")
DEFAULT_KEEP_WHEN_WHEEL = ("pyorc",)
INDEX_OPTIONS = (
    "--index-url",
    "-i",
    "--extra-index-url",
    "--find-links",
    "-f",
    "--no-index",
    "--trusted-host",
)
INDEX_OPTION_POLICIES = ("keep", "drop", "keep-insecure")
PASS_THROUGH_OPTIONS = ("--pre", "--prefer-binary", "--only-binary", "--no-binary")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_URL = re.compile(r"^(https?|ftp|git\+[a-z]+|hg\+[a-z]+|svn\+[a-z]+|bzr\+[a-z]+)://", re.I)
_PLAIN_HTTP = re.compile(r"(^|\s|@\s*)([a-z]+\+)?http://", re.I)
_INSECURE_FIX = (
    "lets anyone on the network between the installer and the index change the model's code; "
    "use https, or keep it anyway with -P index_options=keep-insecure"
)
_CREDENTIALS_NOTE = (
    "credentials in {line!r} are not stored (replaced by ***): installs of the model env, "
    "including the check before logging, take them from ~/.netrc or the installer's own "
    "configuration (pip.conf / PIP_EXTRA_INDEX_URL with the same URL)"
)


class RequirementsError(DaiMlflowError):
    """A line of a pipeline's requirements cannot be carried into a model."""

    def __init__(self, file: Path, lineno: int, line: str, fix: str) -> None:
        super().__init__(f"{file}:{lineno}: {redact_credentials(line.strip())!r} {fix}")


@dataclass(frozen=True)
class RequirementsPolicy:
    """How to treat the pipeline's requirements.

    Attributes:
        exclude: projects dropped from lines and wheels.
        keep_when_wheel: excluded projects kept when their wheel is present in the folder.
        index_options: ``keep`` (default) or ``drop`` index/find-links lines (with a note);
            ``keep-insecure`` also keeps ``--trusted-host`` and plain ``http://`` sources.
        mlflow_version: override the mlflow pin (default: ``MLFLOW_FOR_PYTHON``).
    """

    exclude: Tuple[str, ...] = DEFAULT_EXCLUDE
    keep_when_wheel: Tuple[str, ...] = DEFAULT_KEEP_WHEN_WHEEL
    index_options: str = "keep"
    mlflow_version: Optional[str] = None

    def __post_init__(self) -> None:
        if self.index_options not in INDEX_OPTION_POLICIES:
            raise DaiMlflowError(
                f"index_options must be one of {', '.join(INDEX_OPTION_POLICIES)}, got "
                f"{self.index_options!r}"
            )

    @classmethod
    def from_csv(cls, exclude: str, **kwargs: object) -> RequirementsPolicy:
        """Build from a comma-separated exclusion list (``""`` excludes nothing)."""
        names = tuple(n.strip() for n in exclude.split(",") if n.strip())
        return cls(exclude=names, **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SanitizedRequirements:
    """The model's requirements, derived from the pipeline.

    Attributes:
        python: the target Python ``major.minor``.
        requirements: pip lines for the model (options first, then pins, then wheel paths).
        constraints: constraint lines (already filtered), or empty.
        wheels: the wheel file names referenced under ``artifacts/scoring-pipeline``.
        notes: one line per non-trivial decision (shown to the user and logged as a tag).
    """

    python: str
    requirements: Tuple[str, ...]
    constraints: Tuple[str, ...] = ()
    wheels: Tuple[str, ...] = ()
    notes: Tuple[str, ...] = field(default_factory=tuple)


def canonical_name(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def mlflow_requirement(python: str, override: Optional[str] = None) -> str:
    """``mlflow==X`` for a release that supports ``python``.

    Raises:
        DaiMlflowError: no known mlflow release for that Python and no override.
    """
    version = override or MLFLOW_FOR_PYTHON.get(python)
    if not version:
        known = ", ".join(sorted(MLFLOW_FOR_PYTHON))
        raise DaiMlflowError(
            f"no mlflow release known for Python {python} (known: {known}); pass an mlflow "
            "version explicitly"
        )
    return f"mlflow=={version}"


def _strip_comment(line: str) -> str:
    # pip treats " #" (whitespace then #) as the start of a comment.
    return re.split(r"(^|\s)#", line, maxsplit=1)[0].strip()


def _is_wheel_line(line: str) -> bool:
    target = line.split(";")[0].strip()
    has_scheme = "://" in target or target.lower().startswith("file:")
    return target.lower().endswith(".whl") and not has_scheme and " @ " not in target


def _option(line: str) -> Tuple[str, str]:
    """Split ``--opt value`` / ``--opt=value`` / ``-f value``."""
    m = re.match(r"^(-{1,2}[A-Za-z][\w-]*)(?:[=\s]\s*(.*))?$", line)
    if not m:
        return line, ""
    return m.group(1), (m.group(2) or "").strip()


@dataclass
class _Collected:
    pins: List[Tuple[str, str]] = field(default_factory=list)  # (canonical name, line)
    options: List[str] = field(default_factory=list)
    constraints: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def _collect(
    file: Path, folder: Path, policy: RequirementsPolicy, out: _Collected, seen: Set[Path]
) -> None:
    if file in seen:
        return
    seen.add(file)
    for lineno, raw in enumerate(file.read_text().splitlines(), start=1):
        line = _strip_comment(raw)
        if not line:
            continue
        if line.startswith("-"):
            _collect_option(file, folder, lineno, line, policy, out, seen)
            continue
        if _is_wheel_line(line):
            continue  # replaced by the wheels actually present
        if line.lower().startswith("file:") or " @ file:" in line.lower():
            raise RequirementsError(
                file,
                lineno,
                line,
                "is a local file URL, which a model folder cannot reproduce; put the wheel into "
                "the scoring-pipeline folder and remove the line",
            )
        m = _NAME.match(line)
        if _URL.match(line) or " @ " in line:
            if _PLAIN_HTTP.search(line) and policy.index_options != "keep-insecure":
                raise RequirementsError(
                    file, lineno, line, f"downloads over plain http, which {_INSECURE_FIX}"
                )
            _note_credentials(line, out.notes)
            out.notes.append(f"kept URL requirement {line!r} (needs network access at install)")
            name = canonical_name(line.split(" @ ")[0]) if " @ " in line else ""
            out.pins.append((name, line))
            continue
        if not m:
            raise RequirementsError(
                file, lineno, line, "is not a requirement pip understands; fix or remove it"
            )
        out.pins.append((canonical_name(m.group(1)), line))


def _inner_file(file: Path, folder: Path, lineno: int, line: str, value: str) -> Path:
    target = (file.parent / value).resolve()
    if not target.is_file() or folder.resolve() not in target.parents:
        raise RequirementsError(
            file,
            lineno,
            line,
            "names a file that is not inside the scoring-pipeline folder; copy it there",
        )
    return target


def _collect_option(
    file: Path,
    folder: Path,
    lineno: int,
    line: str,
    policy: RequirementsPolicy,
    out: _Collected,
    seen: Set[Path],
) -> None:
    opt, value = _option(line)
    if opt in ("-e", "--editable"):
        raise RequirementsError(
            file,
            lineno,
            line,
            "is an editable install, which cannot be reproduced in a model env; build a wheel "
            "(`pip wheel --no-deps <dir>`) into the scoring-pipeline folder and drop the line",
        )
    if opt in ("-r", "--requirement"):
        _collect(_inner_file(file, folder, lineno, line, value), folder, policy, out, seen)
        return
    if opt in ("-c", "--constraint"):
        target = _inner_file(file, folder, lineno, line, value)
        out.constraints.extend(_constraint_lines(target, policy, out.notes))
        return
    if opt in INDEX_OPTIONS:
        if opt in ("--find-links", "-f") and not _URL.match(value):
            raise RequirementsError(
                file,
                lineno,
                line,
                "points at a local folder, which a model folder cannot reproduce; copy the "
                "wheels into the scoring-pipeline folder and drop the line",
            )
        insecure = opt == "--trusted-host" or bool(_PLAIN_HTTP.match(value))
        if policy.index_options == "drop":
            out.notes.append(f"dropped index option {line!r} (index_options=drop)")
            return
        if insecure and policy.index_options != "keep-insecure":
            what = "turns off TLS checks for a host" if opt == "--trusted-host" else "is plain http"
            raise RequirementsError(file, lineno, line, f"{what}, which {_INSECURE_FIX}")
        _note_credentials(line, out.notes)
        if insecure:
            out.notes.append(f"kept insecure index option {line!r} (index_options=keep-insecure)")
        elif opt == "--extra-index-url":
            out.notes.append(
                f"kept index option {line!r}: pip takes the highest version found on any index, "
                "so a public package named like a private one wins; use -P index_options=drop "
                "and one mirror (PIP_INDEX_URL / UV_INDEX_URL) if that matters"
            )
        else:
            out.notes.append(f"kept index option {line!r} (installs will use it)")
        out.options.append(line)
        return
    if opt in PASS_THROUGH_OPTIONS:
        out.options.append(line)
        return
    raise RequirementsError(
        file, lineno, line, "uses a pip option dai-mlflow does not carry into models; remove it"
    )


def _note_credentials(line: str, notes: List[str]) -> None:
    if has_credentials(line):
        notes.append(_CREDENTIALS_NOTE.format(line=redact_credentials(line)))


def _redacted(lines: Sequence[str]) -> Tuple[str, ...]:
    return tuple(redact_credentials(line) for line in lines)


def _constraint_lines(path: Path, policy: RequirementsPolicy, notes: List[str]) -> List[str]:
    excluded = {canonical_name(n) for n in policy.exclude} | {"mlflow", "mlflow-skinny"}
    lines = []
    for raw in path.read_text().splitlines():
        line = _strip_comment(raw)
        if not line:
            continue
        if line.startswith("-") or _is_wheel_line(line):
            notes.append(f"ignored constraint line {line!r} of {path.name} (not a version pin)")
            continue
        m = _NAME.match(line)
        if m and canonical_name(m.group(1)) in excluded:
            continue
        lines.append(line)
    return lines


def sanitize(
    pipeline: ScoringPipeline, policy: Optional[RequirementsPolicy] = None
) -> SanitizedRequirements:
    """Build the model's requirements from the pipeline's files.

    Args:
        pipeline: the validated pipeline.
        policy: exclusions and option handling.

    Returns:
        The requirement and constraint lines, referenced wheels and notes.

    Raises:
        RequirementsError: a line cannot be carried into a model (the message names the line).
        DaiMlflowError: no mlflow release for the pipeline's Python.
    """
    policy = policy or RequirementsPolicy()
    out = _Collected()
    _collect(pipeline.requirements_file, pipeline.folder, policy, out, set())
    if pipeline.constraints_file is not None:
        out.constraints.extend(_constraint_lines(pipeline.constraints_file, policy, out.notes))

    excluded = {canonical_name(n) for n in policy.exclude}
    keep_if_wheel = {canonical_name(n) for n in policy.keep_when_wheel}
    wheels: List[Wheel] = []
    for w in pipeline.wheels:
        name = canonical_name(w.project)
        if name in excluded and name not in keep_if_wheel:
            out.notes.append(f"excluded wheel {w.file_name} (exclude list)")
            continue
        wheels.append(w)
    wheel_names = {canonical_name(w.project) for w in wheels}

    pins: List[str] = []
    seen: Set[str] = set()
    for name, line in out.pins:
        if name in excluded and name not in wheel_names:
            out.notes.append(f"excluded requirement {line!r} (exclude list)")
            continue
        if name in wheel_names:
            continue  # the bundled wheel is installed instead
        if name in ("mlflow", "mlflow-skinny"):
            out.notes.append(f"replaced {line!r} with an mlflow that supports the model's Python")
            continue
        key = name if name else line
        if key in seen:
            continue
        seen.add(key)
        pins.append(line)

    mlflow_line = mlflow_requirement(pipeline.python, policy.mlflow_version)
    shims = [
        s
        for s in SHIMS_FOR_PYTHON.get(pipeline.python, ())
        if canonical_name(_NAME.match(s).group(1)) not in seen  # type: ignore[union-attr]
    ]
    options = list(dict.fromkeys(out.options))
    wheel_lines = [f"{ARTIFACT_PREFIX}/{w.file_name}" for w in wheels]
    constraints = _drop_conflicting_constraints(out.constraints, mlflow_line, shims)
    return SanitizedRequirements(
        python=pipeline.python,
        requirements=_redacted(options + [mlflow_line] + shims + pins + wheel_lines),
        constraints=_redacted(list(dict.fromkeys(constraints))),
        wheels=tuple(w.file_name for w in wheels),
        notes=_redacted(out.notes),
    )


def _drop_conflicting_constraints(
    constraints: Sequence[str], mlflow_line: str, shims: Sequence[str]
) -> List[str]:
    """Constraints never override what dai-mlflow itself pins (mlflow, shims)."""
    ours = {canonical_name(_NAME.match(x).group(1)) for x in [mlflow_line, *shims]}  # type: ignore[union-attr]
    kept = []
    for line in constraints:
        m = _NAME.match(line)
        if m and canonical_name(m.group(1)) in ours:
            continue
        kept.append(line)
    return kept


def _requires_dist(wheel: Wheel) -> List[str]:
    """``Requires-Dist`` lines of a wheel that apply without extras (markers kept as text)."""
    lines = []
    for key, value in wheel.metadata_headers():
        if key != "requires-dist" or "extra ==" in value.replace("extra==", "extra =="):
            continue
        lines.append(value)
    return lines


def shared_requirements(
    reqs: SanitizedRequirements, pipeline: ScoringPipeline
) -> SanitizedRequirements:
    """The model env's requirements: ``reqs`` without the experiment wheel.

    Every pipeline of a DAI version shares these, so envs keyed by them are shared too; the
    experiment wheel stays in the model's artifacts and is loaded at model load time
    (:mod:`dai_mlflow.model.experiment`). The wheel's own ``Requires-Dist`` entries that nothing
    else provides are added, so the env still has everything its code imports.

    Returns:
        The same requirements, minus the experiment wheel line, plus such dependencies, with a
        note for each decision. ``wheels`` still lists the experiment wheel (it must be stored).
    """
    wheel = pipeline.experiment_wheel
    wheel_line = f"{ARTIFACT_PREFIX}/{wheel.file_name}"
    kept = [line for line in reqs.requirements if line != wheel_line]
    provided = {canonical_name(w.project) for w in pipeline.wheels}
    for line in kept:
        m = _NAME.match(line)
        if m and not line.startswith(("-", ".", "/")):
            provided.add(canonical_name(m.group(1)))
    notes = list(reqs.notes)
    notes.append(
        f"experiment wheel {wheel.file_name} is loaded from the model's artifacts at load "
        "time, not installed: the env holds only what every pipeline of this DAI version shares"
    )
    for dep in _requires_dist(wheel):
        m = _NAME.match(dep)
        if not m or canonical_name(m.group(1)) in provided:
            continue
        provided.add(canonical_name(m.group(1)))
        kept.append(dep)
        notes.append(f"added {dep!r}, required by the experiment wheel and by nothing else")
    return SanitizedRequirements(
        python=reqs.python,
        requirements=_redacted(kept),
        constraints=reqs.constraints,
        wheels=reqs.wheels,
        notes=_redacted(notes),
    )
