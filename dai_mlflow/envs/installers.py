"""What installer runs (pip, uv, ``python -m venv``) are given, and how their URLs are shown.

:func:`installer_environ`: the caller's environment without the license (``DRIVERLESS_AI_*``):
installers run packages' code and need none. :func:`redact_credentials`: ``user:token@`` in a
URL becomes ``***@`` in anything shown or stored (``ssh`` users such as ``git@`` are kept).
Stdlib only; Python 3.8-safe. See README.md, "Running it on your pipeline".
"""

from __future__ import annotations

import os
import re
from typing import Dict, Mapping, Optional

LICENSE_VAR_PREFIX = "DRIVERLESS_AI_"
MASK = "***"
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]+)@")


def installer_environ(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``environ`` (default this process's) without ``DRIVERLESS_AI_*``, never prompting."""
    source = os.environ if environ is None else environ
    env = {k: v for k, v in source.items() if not k.startswith(LICENSE_VAR_PREFIX)}
    env["PIP_NO_INPUT"] = "1"
    return env


def _mask(match: re.Match) -> str:
    scheme, userinfo = match.group("scheme"), match.group("userinfo")
    if "ssh" in scheme.lower() and ":" not in userinfo:
        return match.group(0)
    return f"{scheme}{MASK}@"


def redact_credentials(text: str) -> str:
    """``text`` with every URL's ``user:password@`` (or ``token@``) replaced by ``***@``."""
    return _USERINFO.sub(_mask, text)


def has_credentials(text: str) -> bool:
    """Whether ``text`` holds a URL with credentials :func:`redact_credentials` would mask."""
    return redact_credentials(text) != text
