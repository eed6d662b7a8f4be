"""The player's budget: at most 12 KB minified and gzipped, no dependencies, no build step."""

from __future__ import annotations

import gzip
import importlib.util
import re

from tests.browser.conftest import ROOT

PLAYER = ROOT / "cxrelay" / "static" / "cxrelay.js"


def _jssize() -> object:
    spec = importlib.util.spec_from_file_location("jssize", ROOT / "tools" / "jssize.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_player_fits_in_12_kb_minified_and_gzipped() -> None:
    jssize = _jssize()
    source = PLAYER.read_text()
    stripped = jssize.strip(source)  # type: ignore[attr-defined]
    # comments are gone
    assert "Attributes (changing camera, server, src or token reconnects)" not in stripped
    assert jssize.node_parses(stripped) is not False  # type: ignore[attr-defined]
    assert len(gzip.compress(stripped.encode(), 9)) <= 12 * 1024


def test_player_has_no_dependencies() -> None:
    source = PLAYER.read_text()
    assert not re.search(r"^\s*import\s", source, re.M)
    assert not re.search(r"\bimport\s*\(", source)
    assert "export class CxrelayPlayer" in source
