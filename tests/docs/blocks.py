"""The commands the documentation gives: shell fences of the Markdown pages, VS Code's launches.

A command is one logical shell line of a ```bash / ```sh / ```console fence (continuation
lines and multi-line quotes joined; comment-only lines and ``# output`` lines left out), as the
reader would paste it. ``.vscode/launch.json`` configurations become the command line VS Code
runs (``python program args`` in the workspace, with the configuration's ``env``).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/*.md", "spark_inference/README.md", "envs/README.md")
LAUNCH_JSON = ".vscode/launch.json"
SHELL_LANGS = ("bash", "sh", "shell", "console")
# An unlabelled fence whose first line starts like this is a command someone forgot to label.
_COMMAND_START = re.compile(r"^\s*(\$ )?(venvs/|python|mlflow |make |source |export |curl |pip )")
_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")


@dataclass(frozen=True)
class Command:
    """One documented command: where it is written and its text."""

    file: str  # relative to the checkout
    line: int  # first line of the command (1-based)
    text: str
    env: tuple = ()  # (name, value) pairs set by the launcher (launch.json's "env")

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Fence:
    file: str
    line: int  # the opening fence's line
    lang: str
    body: List[str]


def doc_files(root: Path = REPO_ROOT) -> List[Path]:
    files: List[Path] = []
    for pattern in DOCS:
        files += sorted(root.glob(pattern))
    return files


def fences(path: Path, root: Path = REPO_ROOT) -> List[Fence]:
    """Every fenced block of a Markdown file (indented fences of list items included)."""
    rel = path.relative_to(root).as_posix()
    out: List[Fence] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, marker, lang = m.group(1), m.group(2), m.group(3).lower()
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(marker[:3]):
            text = lines[j]
            body.append(text[len(indent) :] if text.startswith(indent) else text.lstrip())
            j += 1
        out.append(Fence(rel, i + 1, lang, body))
        i = j + 1
    return out


def _complete(text: str) -> bool:
    if text.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(text, comments=True)
    except ValueError:  # an open quote: the command goes on on the next line
        return False
    return True


def commands_of(fence: Fence) -> List[Command]:
    """The logical command lines of a shell fence."""
    out: List[Command] = []
    pending: List[str] = []
    start = 0
    for offset, raw in enumerate(fence.body):
        line = raw[2:] if fence.lang == "console" and raw.startswith("$ ") else raw
        if not pending:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if fence.lang == "console" and not raw.startswith("$ "):
                continue  # console output
            start = fence.line + 1 + offset
        pending.append(line)
        text = "\n".join(pending)
        if _complete(text):
            out.append(Command(fence.file, start, text.strip()))
            pending = []
    if pending:
        out.append(Command(fence.file, start, "\n".join(pending).strip()))
    return out


def doc_commands(root: Path = REPO_ROOT) -> List[Command]:
    """Every command of every shell fence of the documentation pages."""
    out: List[Command] = []
    for path in doc_files(root):
        for fence in fences(path, root):
            if fence.lang in SHELL_LANGS:
                out += commands_of(fence)
    return out


def unlabelled_commands(root: Path = REPO_ROOT) -> List[str]:
    """``file:line`` of unlabelled fences that hold a command (they would escape the tests)."""
    return [
        f"{fence.file}:{fence.line}"
        for path in doc_files(root)
        for fence in fences(path, root)
        if not fence.lang and fence.body and _COMMAND_START.match(fence.body[0])
    ]


def _strip_jsonc(text: str) -> str:
    """launch.json allows // comments; drop them outside strings."""
    out, in_string, i = [], False, 0
    while i < len(text):
        c = text[i]
        if in_string:
            out.append(c)
            if c == "\\":
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
            out.append(c)
        elif text.startswith("//", i):
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def launch_commands(root: Path = REPO_ROOT) -> List[Command]:
    """Each launch.json configuration as the command VS Code runs from the workspace folder.

    ``${workspaceFolder}`` becomes ``.`` (the cwd), ``${input:x}`` the input's default: the
    value a user accepts at the prompt.
    """
    path = root / LAUNCH_JSON
    raw = path.read_text()
    config = json.loads(_strip_jsonc(raw))
    defaults: Dict[str, str] = {i["id"]: i.get("default", "") for i in config.get("inputs", [])}

    def expand(value: str) -> str:
        value = value.replace("${workspaceFolder}/", "").replace("${workspaceFolder}", ".")
        return re.sub(r"\$\{input:(\w+)\}", lambda m: defaults[m.group(1)], value)

    out: List[Command] = []
    for conf in config["configurations"]:
        assert expand(conf.get("cwd", "${workspaceFolder}")) == ".", conf["name"]
        argv = [expand(conf["python"]), expand(conf["program"])]
        argv += [expand(a) for a in conf.get("args", [])]
        env = tuple((k, expand(v)) for k, v in conf.get("env", {}).items())
        line = next(n for n, ln in enumerate(raw.splitlines(), 1) if conf["name"] in ln)
        out.append(Command(LAUNCH_JSON, line, shlex.join(argv), env))
    return out


def all_commands(root: Path = REPO_ROOT) -> List[Command]:
    return doc_commands(root) + launch_commands(root)
