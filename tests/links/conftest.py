"""Link tests need root, iproute2 and /dev/net/tun (`make test` installs iproute2; CI runs as
root). A missing part is a failure with the reason, never a skip."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.links.netns import NetnsLink, missing_parts


@pytest.fixture
def link() -> Iterator[NetnsLink]:
    """A fresh pair of namespaces joined by the (unshaped) link emulator."""
    missing = missing_parts()
    if missing:
        pytest.fail("link tests need " + ", ".join(missing))
    with NetnsLink() as made:
        yield made
