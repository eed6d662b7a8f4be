"""Every cxrelay module imports on its own, first, in a fresh interpreter: no import cycle that
only a lucky order hides (an H.265-only relay once failed on `import cxrelay.h265`, because the
test suite and H.264 relays always imported cxrelay.h264 first)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import cxrelay

MODULES = sorted(m.name for m in pkgutil.walk_packages(cxrelay.__path__, "cxrelay.")
                 if not m.name.endswith("__main__"))


def test_modules_found() -> None:
    assert {"cxrelay.assembly", "cxrelay.h264", "cxrelay.h265", "cxrelay.ingest"} <= set(MODULES)


def test_every_module_imports_first() -> None:
    # one fresh interpreter per module, all at once: only the CPU time counts
    runs = {module: subprocess.Popen([sys.executable, "-c", f"import {module}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for module in MODULES}
    failed = {}
    for module, run in runs.items():
        _, err = run.communicate(timeout=120)
        if run.returncode:
            failed[module] = err.strip().splitlines()[-1:]
    assert not failed
