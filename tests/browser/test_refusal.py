"""A player the relay refuses says why (origin, token, camera, limits), in every engine.

A browser's WebSocket API hides the refused upgrade's HTTP status; the player asks the relay
again with a plain GET, which answers the same verdict, readable from any page."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from cxrelay.access import mint_token
from tests.browser.conftest import Daemon, Site
from tests.browser.engines import Page
from tests.browser.pages import events, open_player

pytestmark = pytest.mark.browser

SECRET = "a browser test secret, 32 bytes."

PLAYER_STATE = "(s) => { const el = document.querySelector(s); return [el.state, el.reason]; }"
OVERLAY = "(s) => document.querySelector(s).shadowRoot.querySelector('[part=overlay]').textContent"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, site: Site) -> Iterator[Daemon]:
    """A demo relay that wants viewer tokens, allows the test site's secure origin only, and
    one viewer at most."""
    config = tmp_path_factory.mktemp("guarded") / "cxrelay.toml"
    config.write_text(f'[server]\nmax_viewers = 1\nallowed_origins = ["{site.secure}"]\n\n'
                      f'[auth]\nsecret = "{SECRET}"\n')
    daemon = Daemon("--demo", "--config", str(config))
    try:
        yield daemon.start()
    finally:
        daemon.close()


def wait_for_state(page: Page, selector: str, state: str) -> list[str]:
    page.wait_for("(s, st) => document.querySelector(s)?.state === st", selector, state,
                  what=f"{selector} {state}")
    value: list[str] = page.evaluate(PLAYER_STATE, selector)
    return value


def errors(page: Page) -> list[list[Any]]:
    return [e[1:] for e in events(page) if e[0] == "error"]


def test_token_missing_then_given(page: Page, site: Site, guarded: Daemon) -> None:
    open_player(page, site.secure, guarded.url,
                '<cxrelay-player id="p" camera="demo"></cxrelay-player>')
    assert wait_for_state(page, "#p", "error") == \
        ["error", "token missing, expired or not for this camera"]
    assert errors(page) == [["token missing, expired or not for this camera", 401,
                             "a viewer token is required"]]
    assert "token missing" in page.evaluate(OVERLAY, "#p")
    # only a new token can fix this: no retries meanwhile
    time.sleep(1.5)
    assert page.evaluate("() => sockets.length") == 1
    token = mint_token(SECRET, ["demo"], 600)
    page.evaluate("(t) => document.querySelector('#p').setAttribute('token', t)", token)
    assert wait_for_state(page, "#p", "live")[0] == "live"


def test_expired_token(page: Page, site: Site, guarded: Daemon) -> None:
    stale = mint_token(SECRET, ["demo"], 60, now=0)
    open_player(page, site.secure, guarded.url,
                f'<cxrelay-player id="p" camera="demo" token="{stale}"></cxrelay-player>')
    wait_for_state(page, "#p", "error")
    assert errors(page) == [["token missing, expired or not for this camera", 401,
                             "token expired"]]


def test_unknown_camera(page: Page, site: Site, guarded: Daemon) -> None:
    token = mint_token(SECRET, "*", 600)
    open_player(page, site.secure, guarded.url,
                f'<cxrelay-player id="p" camera="nope" token="{token}"></cxrelay-player>')
    assert wait_for_state(page, "#p", "error") == ["error", 'no camera named "nope"']
    assert errors(page) == [['no camera named "nope"', 404, "no camera named 'nope'"]]


def test_too_many_viewers_then_room(page: Page, site: Site, guarded: Daemon) -> None:
    token = mint_token(SECRET, "*", 600)
    open_player(page, site.secure, guarded.url,
                f'<cxrelay-player id="a" camera="demo" token="{token}"></cxrelay-player>'
                f'<cxrelay-player id="b" camera="demo" token="{token}" hidden></cxrelay-player>')
    wait_for_state(page, "#a", "live")
    page.evaluate("() => document.querySelector('#b').hidden = false")
    page.wait_for("() => document.querySelector('#b').reason === 'too many viewers'",
                  what="b refused: too many viewers")
    assert page.evaluate(PLAYER_STATE, "#b") == ["offline", "too many viewers"]
    page.evaluate("() => document.querySelector('#a').remove()")  # room again: b gets in
    assert wait_for_state(page, "#b", "live")[0] == "live"


def test_origin_not_allowed(page: Page, site: Site, guarded: Daemon) -> None:
    """The test site's other origin, which this relay does not allow."""
    open_player(page, site.insecure, guarded.url,
                '<cxrelay-player id="p" camera="demo"></cxrelay-player>')
    assert wait_for_state(page, "#p", "error") == ["error", "this page's origin is not allowed"]
    assert "origin is not allowed" in page.evaluate(OVERLAY, "#p")
    # read across origins (CORS), and no more than the origin: not the token, not the camera
    assert errors(page) == [["this page's origin is not allowed", 403,
                             f"origin {site.insecure} is not allowed"]]
