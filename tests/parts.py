"""The real parts tests take from Debian (systemd-analyze, nginx, the browsers, node, …).

`make test` installs every one of them. On a developer's machine a missing part skips
the tests that need it; in CI (the CI environment variable set, as .ci/run does) it
fails them: a part that went missing must not turn into a green run.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(part: str, package: str) -> NoReturn:
    """Skip the test, or fail it in CI, for want of `part` (from Debian's `package`)."""
    message = f"{part} is missing (Debian package {package}; `make test` installs it)"
    if in_ci():
        pytest.fail(f"{message}; in CI a missing part fails the run", pytrace=False)
    pytest.skip(message)


def command(name: str, package: str) -> str:
    """The path of a program the test needs (sbin directories included)."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        missing(f"`{name}`", package)
    return path
