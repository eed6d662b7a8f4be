"""The player's budget: at most 12 KB minified and gzipped, no dependencies, no build step.

Pure checks of the source text (no browser); `node` (Debian's nodejs, which `make test`
installs) proves the stripped code still parses, so that the size it measures is real.
"""

from __future__ import annotations

import gzip
import importlib.util
import re
import shutil
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
PLAYER = ROOT / "cxrelay" / "static" / "cxrelay.js"


def _jssize() -> ModuleType:
    spec = importlib.util.spec_from_file_location("jssize", ROOT / "tools" / "jssize.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_player_fits_in_12_kb_minified_and_gzipped() -> None:
    jssize = _jssize()
    stripped = jssize.strip(PLAYER.read_text())
    # comments are gone
    assert "Attributes (changing camera, server, src or token reconnects)" not in stripped
    assert shutil.which("node"), "node is missing: `make deps` installs Debian's nodejs"
    assert jssize.node_parses(stripped) is True, "the stripped player does not parse"
    assert len(gzip.compress(stripped.encode(), 9)) <= 12 * 1024


def test_player_has_no_dependencies() -> None:
    source = PLAYER.read_text()
    assert not re.search(r"^\s*import\s", source, re.M)
    assert not re.search(r"\bimport\s*\(", source)
    assert "export class CxrelayPlayer" in source
