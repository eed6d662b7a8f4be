"""Logging with structlog: one event per line, JSON for journald and log
shippers, colourful key=value for people at a terminal."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

from cxrelay.redact import redact_text

# Known secrets, longest first (so one that contains another is scrubbed whole).
# Module state on purpose: structlog's processors are configured once, and a
# reload that adds a camera must teach them its password.
_secrets: tuple[str, ...] = ()


def add_secrets(secrets: Iterable[str]) -> None:
    global _secrets
    _secrets = tuple(sorted({*_secrets, *(s for s in secrets if s)}, key=len, reverse=True))


def _scrub(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Last line of defence: whatever slipped into an event, no credential leaves."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact_text(value, _secrets)
    return event


def configure_logging(
    fmt: str = "auto",
    level: str = "info",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    stream = stream or sys.stdout
    add_secrets(secrets)
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            _scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
