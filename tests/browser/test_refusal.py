"""A player the relay refuses says why (origin, token, camera, limits), in Debian's chromium.

A browser's WebSocket API hides the refused upgrade's HTTP status; the player asks the relay
again with a plain GET, which answers the same verdict, readable from any page."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cxrelay.access import mint_token
from tests.browser.conftest import Daemon

SECRET = "a browser test secret, 32 bytes."

# The test's players, put into the relay's own page; their events are recorded from the start.
ADD_PLAYERS = """(html) => {
  window.events = [];
  const box = document.createElement('div');
  box.innerHTML = html;
  for (const el of box.querySelectorAll('cxrelay-player')) {
    el.addEventListener('statechange', (e) => events.push(['state', el.id, e.detail.state,
                                                           e.detail.reason]));
    el.addEventListener('error', (e) => events.push(['error', el.id, e.detail.message,
                                                     e.detail.status, e.detail.detail]));
  }
  document.body.prepend(box);
}"""

PLAYER_STATE = "(el) => [el.state, el.reason]"
OVERLAY = "(el) => el.shadowRoot.querySelector('[part=overlay]').textContent"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A demo relay that wants viewer tokens, allows no other origin, and one viewer at most."""
    config = tmp_path_factory.mktemp("guarded") / "cxrelay.toml"
    config.write_text(f'[server]\nmax_viewers = 1\n\n[auth]\nsecret = "{SECRET}"\n')
    daemon = Daemon("--demo", "--config", str(config))
    try:
        yield daemon.start()
    finally:
        daemon.close()


def add_players(page: Any, daemon: Daemon, html: str) -> None:
    """The relay's own page (same origin: a plain GET sends no Origin), its wall emptied."""
    page.route(daemon.url + "/api/cameras", lambda route: route.fulfill(json=[]))
    page.goto(daemon.url + "/")
    page.wait_for_function("!!customElements.get('cxrelay-player')")
    page.evaluate(ADD_PLAYERS, html)


def wait_for_state(page: Any, selector: str, state: str) -> list[str]:
    page.wait_for_function("([s, st]) => document.querySelector(s)?.state === st",
                           arg=[selector, state])
    return page.eval_on_selector(selector, PLAYER_STATE)


def errors(page: Any) -> list[list[Any]]:
    return [e[2:] for e in page.evaluate("events") if e[0] == "error"]


def test_token_missing_then_given(page: Any, guarded: Daemon) -> None:
    sockets: list[Any] = []
    page.on("websocket", lambda ws: sockets.append(ws))
    add_players(page, guarded, '<cxrelay-player id="p" camera="demo"></cxrelay-player>')
    assert wait_for_state(page, "#p", "error") == \
        ["error", "token missing, expired or not for this camera"]
    assert errors(page) == [["token missing, expired or not for this camera", 401,
                             "a viewer token is required"]]
    assert "token missing" in page.eval_on_selector("#p", OVERLAY)
    # only a new token can fix this: no retries meanwhile
    page.wait_for_timeout(1500)
    assert len(sockets) == 1
    token = mint_token(SECRET, ["demo"], 600)
    page.eval_on_selector("#p", "(el, t) => el.setAttribute('token', t)", token)
    assert wait_for_state(page, "#p", "live")[0] == "live"


def test_expired_token(page: Any, guarded: Daemon) -> None:
    stale = mint_token(SECRET, ["demo"], 60, now=0)
    add_players(page, guarded, f'<cxrelay-player id="p" camera="demo" token="{stale}">'
                               '</cxrelay-player>')
    wait_for_state(page, "#p", "error")
    assert errors(page) == [["token missing, expired or not for this camera", 401,
                             "token expired"]]


def test_unknown_camera(page: Any, guarded: Daemon) -> None:
    token = mint_token(SECRET, "*", 600)
    add_players(page, guarded, f'<cxrelay-player id="p" camera="nope" token="{token}">'
                               '</cxrelay-player>')
    assert wait_for_state(page, "#p", "error") == ["error", 'no camera named "nope"']
    assert errors(page) == [['no camera named "nope"', 404, "no camera named 'nope'"]]


def test_too_many_viewers_then_room(page: Any, guarded: Daemon) -> None:
    token = mint_token(SECRET, "*", 600)
    add_players(page, guarded, f'<cxrelay-player id="a" camera="demo" token="{token}">'
                               '</cxrelay-player>')
    wait_for_state(page, "#a", "live")
    page.evaluate(ADD_PLAYERS, f'<cxrelay-player id="b" camera="demo" token="{token}">'
                               '</cxrelay-player>')
    page.wait_for_function("document.querySelector('#b').reason === 'too many viewers'")
    assert page.eval_on_selector("#b", PLAYER_STATE) == ["offline", "too many viewers"]
    page.eval_on_selector("#a", "(el) => el.remove()")  # room again: b retries and gets in
    assert wait_for_state(page, "#b", "live")[0] == "live"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A static web server on another origin, which the relay does not allow."""
    root = tmp_path_factory.mktemp("stranger")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://localhost:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_origin_not_allowed(page: Any, guarded: Daemon, stranger: tuple[str, Path]) -> None:
    base, root = stranger
    (root / "p.html").write_text(
        f'<!doctype html><meta charset="utf-8"><script type="module" src="{guarded.url}'
        '/cxrelay.js"></script><cxrelay-player id="p" camera="demo"></cxrelay-player>'
        "<script>window.events = []; document.getElementById('p').addEventListener('error',"
        " (e) => events.push(['error', 'p', e.detail.message, e.detail.status,"
        " e.detail.detail]));</script>")
    page.goto(f"{base}/p.html")
    assert wait_for_state(page, "#p", "error") == ["error", "this page's origin is not allowed"]
    assert "origin is not allowed" in page.eval_on_selector("#p", OVERLAY)
    # read across origins (CORS), and no more than the origin: not the token, not the camera
    assert errors(page) == [["this page's origin is not allowed", 403,
                             f"origin {base} is not allowed"]]
