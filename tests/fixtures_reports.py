"""Checks shared by the report tests (loaded by tests/conftest.py): PNG and HTML inspection,
and the ``chromium`` fixture (the path of a headless Chromium; skipped when none is installed,
a failure when ``DAI_MLFLOW_REQUIRE_CHROMIUM`` is set, as ``.ci/run`` sets it).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import struct
from typing import List, Tuple

import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
)  # fmt: skip


def png_size(data: bytes) -> Tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails on anything that is not a PNG."""
    assert data[:8] == PNG_MAGIC, "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_sensible_png(data: bytes) -> None:
    width, height = png_size(data)
    assert 200 <= width <= 4000, width
    assert 150 <= height <= 6000, height
    assert len(data) > 5000  # an empty canvas compresses to far less


def remote_references(page: str) -> List[str]:
    """src/href/url() values that point anywhere but the page itself (http, https, //, file)."""
    found = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page, flags=re.I)
    found += re.findall(r"url\(\s*['\"]?([^'\")]+)", page, flags=re.I)
    return [u for u in found if not u.startswith(("data:", "#"))]


def embedded_pngs(page: str) -> List[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of the Chromium binary (Debian's ``chromium`` package)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("DAI_MLFLOW_REQUIRE_CHROMIUM"):
        pytest.fail("chromium is not installed: apt-get install -y chromium (.ci/run does)")
    pytest.skip("chromium is not installed (apt-get install -y chromium); CI installs it")
