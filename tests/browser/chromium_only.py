"""Helpers for browser tests not yet written for every engine: they drive Playwright's own page
API (keyboard, locators, socket frames) in Debian's chromium. New tests use pages.py instead."""

from __future__ import annotations

from typing import Any

from tests.browser import pages
from tests.browser.conftest import Daemon
from tests.browser.pages import ADD_PLAYERS_JS, WATCH_JS


def open_page(page: Any, daemon: Daemon, players: str) -> None:
    """The daemon's own page, its wall emptied, and the test's players in it."""
    page.route(daemon.url + "/api/cameras", lambda route: route.fulfill(json=[]))
    page.goto(daemon.url + "/")
    page.wait_for_function("!!customElements.get('cxrelay-player')")
    page.evaluate(WATCH_JS)
    page.evaluate(ADD_PLAYERS_JS, players)


def wait_state(page: Any, state: str, selector: str = "cxrelay-player",
               timeout: float = 20000) -> None:
    page.wait_for_function(
        "([s, st]) => { const el = document.querySelector(s); return el && el.state === st; }",
        arg=[selector, state], timeout=timeout)


def wait_until(predicate: Any, timeout: float, what: str, page: Any) -> Any:
    """Polls `predicate`, sleeping in Playwright so that its events keep coming meanwhile."""
    return pages.wait_until(predicate, timeout, what,
                            sleep=lambda seconds: page.wait_for_timeout(seconds * 1000))
