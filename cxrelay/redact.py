"""Keep camera credentials out of everything a person or a machine can read. Pure."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")


def redact_url(url: str) -> str:
    """The URL with any user:password replaced by '***'."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"***@{host}" + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Scrub userinfo from any URL in free text (error messages from FFmpeg,
    for instance), and any known secret verbatim."""
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def url_secrets(url: str) -> tuple[str, ...]:
    """The secrets a URL carries, raw and percent-decoded, to scrub from text."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ()
    found: list[str] = []
    # A one- or two-letter user name would scrub half of every message; a
    # password is scrubbed whatever its length.
    for value in (parts.password, parts.username if len(parts.username or "") > 2 else None):
        if value:
            found.append(value)
            found.append(unquote(value))
    # Longest first, so a password that contains the username is scrubbed whole.
    return tuple(sorted(set(found), key=len, reverse=True))
