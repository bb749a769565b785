"""License check of the stand-in runtime: an HMAC-signed text, looked up the way DAI does.

Lookup order (the first one that is set wins; a bad one is an error, never skipped):

1. ``DRIVERLESS_AI_LICENSE_KEY``: the license text, base64-encoded;
2. ``DRIVERLESS_AI_LICENSE_FILE``: path of a license file;
3. ``~/.driverlessai/license.sig``.

The signing secret lives here because this is a stand-in: it only has to reject made-up keys,
not resist an attacker. Error messages are one line and never contain the license text.
Stdlib only, Python 3.8+.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import os
from typing import Dict, Tuple

ENV_LICENSE_KEY = "DRIVERLESS_AI_LICENSE_KEY"
ENV_LICENSE_FILE = "DRIVERLESS_AI_LICENSE_FILE"
DEFAULT_LICENSE_PATH = os.path.join("~", ".driverlessai", "license.sig")
_SECRET = b"dai-mlflow/standin/license-hmac/v1 (a stand-in secret, not an H2O.ai one)"
_SIGNATURE_FIELD = "signature"
_HOW_TO = (
    f"set {ENV_LICENSE_KEY} (base64 of the license file), {ENV_LICENSE_FILE} (its path), "
    f"or put it at {DEFAULT_LICENSE_PATH}"
)


class LicenseError(RuntimeError):
    """No valid Driverless AI license was found."""


def _signature(body: str) -> str:
    return hmac.new(_SECRET, body.encode("utf-8"), hashlib.sha256).hexdigest()


def sign_license(fields: Dict[str, str]) -> str:
    """The text of a license file holding ``fields`` (used by the stand-in builder)."""
    lines = ["# dai-mlflow stand-in license (not an H2O.ai license; useless outside this project)"]
    lines += [f"{key}:{value}" for key, value in fields.items()]
    body = "\n".join(lines)
    return f"{body}\n{_SIGNATURE_FIELD}:{_signature(body)}\n"


def parse_license(text: str, source: str) -> Dict[str, str]:
    """Verify a license text and return its fields.

    Raises:
        LicenseError: the text is not a license signed for this runtime, or it has expired.
    """
    lines = text.replace("\r\n", "\n").strip("\n").split("\n")
    if len(lines) < 2 or not lines[-1].startswith(_SIGNATURE_FIELD + ":"):
        raise LicenseError(f"invalid Driverless AI license from {source}: not a license; {_HOW_TO}")
    body = "\n".join(lines[:-1])
    given = lines[-1].split(":", 1)[1].strip()
    if not hmac.compare_digest(given, _signature(body)):
        raise LicenseError(
            f"invalid Driverless AI license from {source}: signature check failed; {_HOW_TO}"
        )
    fields = {}
    for line in lines[:-1]:
        if line and not line.startswith("#") and ":" in line:
            key, value = line.split(":", 1)
            fields[key.strip()] = value.strip()
    expires = fields.get("expiration_date", "")
    try:
        expired = datetime.datetime.strptime(expires, "%Y/%m/%d").date() < datetime.date.today()
    except ValueError:
        expired = True
    if expired:
        raise LicenseError(f"Driverless AI license from {source} has expired; {_HOW_TO}")
    return fields


def load_license() -> Tuple[str, Dict[str, str]]:
    """Find and verify the license; return (where it came from, its fields).

    Raises:
        LicenseError: no license anywhere, or the first one found is invalid.
    """
    key = os.environ.get(ENV_LICENSE_KEY)
    if key:
        try:
            # `base64 license.sig` wraps its output at 76 columns: whitespace is not part of it.
            compact = "".join(key.split())
            text = base64.b64decode(compact, validate=True).decode("utf-8")
        except (binascii.Error, ValueError) as e:
            raise LicenseError(
                f"invalid Driverless AI license in {ENV_LICENSE_KEY}: not base64; {_HOW_TO}"
            ) from e
        return ENV_LICENSE_KEY, parse_license(text, ENV_LICENSE_KEY)
    path = os.environ.get(ENV_LICENSE_FILE)
    source = ENV_LICENSE_FILE
    if not path:
        path = os.path.expanduser(DEFAULT_LICENSE_PATH)
        source = DEFAULT_LICENSE_PATH
        if not os.path.isfile(path):
            raise LicenseError(f"Driverless AI license not found; {_HOW_TO}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise LicenseError(
            f"cannot read the Driverless AI license file {path} (from {source}): "
            f"{type(e).__name__}; {_HOW_TO}"
        ) from e
    return source, parse_license(text, f"{source} ({path})")
