"""Hostile HTTP against a real server: traversal, junk and oversized requests.

Requests are raw bytes over a socket, so no client library normalises the
path first. Whatever arrives, the answer is a route's normal response or a
plain refusal: never a file from outside cxrelay/static, never a 5xx, never an
exception in the server, and /healthz still answers afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from cxrelay.app import Relay
from cxrelay.config import CameraConfig, Config, ServerConfig

STATIC = Path(__file__).resolve().parents[2] / "cxrelay" / "static"
STATIC_BODIES = {p.read_bytes() for p in STATIC.iterdir() if p.is_file()}
T = TypeVar("T")
REQUEST_TIMEOUT = 10.0  # a hang detector, not a speed assertion


@dataclass
class Reply:
    status: int | None  # None: the server closed without answering
    head: bytes
    body: bytes


async def talk(port: int, raw: bytes, read: Callable[[asyncio.StreamReader], Awaitable[T]]) -> T:
    """Send raw bytes; what ``read`` makes of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            writer.write(raw)
            await writer.drain()
            return await read(reader)
    finally:
        writer.close()


async def one_reply(reader: asyncio.StreamReader) -> Reply:
    """One response: head, then Content-Length bytes."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return Reply(None, b"", b"")
    status = int(head.split(b" ", 2)[1])
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    body = await reader.readexactly(length) if status != 101 else b""
    return Reply(status, head, body)


async def send(port: int, raw: bytes) -> Reply:
    return await talk(port, raw, one_reply)


async def exchange(port: int, raw: bytes) -> bytes:
    """Everything the server sends back until it closes."""
    return await talk(port, raw, lambda reader: reader.read())


def get(target: bytes, headers: bytes = b"Host: 127.0.0.1\r\n") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\n" + headers + b"\r\n"


class ErrorRecords(logging.Handler):
    """Errors websockets logs when process_request or a handler raises."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    # on_demand: the demo source only runs while someone watches.
    camera = CameraConfig(name="demo", url="demo://", on_demand=True, linger=0)
    relay = Relay(Config(server=ServerConfig(host="127.0.0.1", port=0), cameras=(camera,)))
    errors = ErrorRecords()
    logging.getLogger("websockets").addHandler(errors)
    await relay.startup()
    try:
        yield relay
        await assert_healthy(port_of(relay))
    finally:
        await relay.shutdown()
        logging.getLogger("websockets").removeHandler(errors)
    assert [r.getMessage() for r in errors.records] == []


def port_of(relay: Relay) -> int:
    assert relay.server is not None
    return relay.server.port


def assert_harmless(reply: Reply) -> None:
    """Any answer that is not a 5xx and, if it is a 200, is one of ours."""
    if reply.status is None:
        return
    assert reply.status < 500, reply.head
    if reply.status == 200:
        assert reply.body in STATIC_BODIES or reply.body.startswith(b"# HELP") \
            or is_json(reply.body), reply.body[:200]


def is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


async def assert_healthy(port: int) -> None:
    reply = await send(port, get(b"/healthz"))
    assert reply.status == 200
    assert json.loads(reply.body)["status"] == "ok"


LEGIT = [
    (b"/healthz", "health"),
    (b"/healthz?x=%00junk&&&=;&token=abc", "health"),
    (b"/api/cameras", "cameras"),
    (b"/api/cameras?%zz=%%", "cameras"),
    (b"/", "index.html"),
    (b"/index.html", "index.html"),
    (b"/cxrelay.js", "cxrelay.js"),
    (b"/cxrelay.js?v=1#frag", "cxrelay.js"),
]


@pytest.mark.parametrize(("target", "what"), LEGIT)
async def test_legit_routes(relay: Relay, target: bytes, what: str) -> None:
    reply = await send(port_of(relay), get(target))
    assert reply.status == 200, reply.head
    if what == "health":
        assert json.loads(reply.body)["status"] == "ok"
    elif what == "cameras":
        assert [c["name"] for c in json.loads(reply.body)] == ["demo"]
    else:
        assert reply.body == (STATIC / what).read_bytes()


HOSTILE = [
    b"/../setup.cfg",
    b"/../../../../etc/passwd",
    b"/%2e%2e/%2e%2e/etc/passwd",
    b"/%2E%2E/setup.cfg",
    b"/..%2f..%2fsetup.cfg",
    b"/..\\..\\setup.cfg",
    b"/static/..%2fcli.py",
    b"/static/cxrelay.js",
    b"/static/../cli.py",
    b"//etc/passwd",
    b"//x/healthz",  # a path, not a host and a path
    b"//127.0.0.1/cxrelay.js",
    b"http://127.0.0.1/../setup.cfg",
    b"/etc/passwd",
    b"/%2fetc%2fpasswd",
    b"/cxrelay.js/../../x",
    b"/cxrelay.js/",
    b"/./cxrelay.js",
    b"/CXRELAY.JS",
    b"/cxrelay.js%00.html",
    b"/cxrelay.js\x00",
    b"/index.html/..",
    b"/cli.py",
    b"/__init__.py",
    b"/server.py",
    b"/healthz/../setup.cfg",
    b"/api/cameras/../../setup.cfg",
    b"/api/../setup.cfg",
    b"/ws/../api/cameras",
    b"/ws/%2e%2e",
    b"/ws/..%2f..%2fsetup.cfg",
    b"/ws/demo/../../setup.cfg",
    b"/ws/",
    b"/ws/demo%00",
    b"/ws/" + b"A" * 5000,
    b"/" + b"a" * 7000,
    b"/a\x00b",
    b"/\x00",
    b"*",
    b"",
    b"/%uff0e%uff0e/setup.cfg",
    b"/%c0%ae%c0%ae/setup.cfg",
]


@pytest.mark.parametrize("target", HOSTILE)
async def test_hostile_paths_get_404(relay: Relay, target: bytes) -> None:
    reply = await send(port_of(relay), get(target))
    assert reply.status == 404, reply.head
    assert reply.body.startswith((b"not found", b"no camera named")), reply.body[:200]
    assert reply.body not in STATIC_BODIES


@pytest.mark.parametrize("raw", [
    get(b"/" + b"a" * 9000),  # longer than a request line may be
    get("/ü/setup.cfg".encode()),  # raw UTF-8 in the request line
    get(b"/healthz?\xff\xfe"),
    get(b"/healthz", b"Host: x\r\nX-Junk: \xff\x00\x01\r\n"),
    get(b"/healthz", b"Host: x\r\nX-Big: " + b"a" * 9000 + b"\r\n"),
    get(b"/healthz", b"X: a\r\n" * 300),
    get(b"/healthz", b"Host: x\r\nno colon here\r\n"),
    get(b"/healthz", b"Host: x\r\nContent-Length: -1\r\n"),
    get(b"/healthz", b"Host: x\r\nTransfer-Encoding: chunked\r\n") + b"zz\r\n",
    b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /healthz HTTP/0.9\r\n\r\n",
    b"GET /healthz HTTP/9.9\r\n\r\n",
    b"GET /healthz\r\n\r\n",
    b"\r\n\r\n",
    # A TLS ClientHello (given an end of line: without one the server waits
    # for the rest until handshake_timeout, which is right, but slow to test).
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 64 + b"\r\n\r\n",
    b"\x00" * 100 + b"\r\n\r\n",
])
async def test_malformed_requests_are_refused_not_crashed(relay: Relay, raw: bytes) -> None:
    port = port_of(relay)
    reply = await send(port, raw)
    assert reply.status is None or 400 <= reply.status < 500, reply.head
    await assert_healthy(port)


async def test_websocket_upgrade_with_junk_still_works(relay: Relay) -> None:
    """The legit upgrade (junk query, junk cookie, odd headers) is untouched."""
    headers = (b"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               b"Cookie: ;;=; a=\"b; cxrelay_token=\r\nX-Forwarded-For: ::ffff:1.2.3.4\r\n")
    reply = await send(port_of(relay), get(b"/ws/demo?x=%zz&&;token=", headers))
    assert reply.status == 101, reply.head
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in reply.head
    unknown = await send(port_of(relay), get(b"/ws/nocamera", headers))
    assert unknown.status == 404


PATH_CHARS = st.sampled_from(
    ["/", ".", "..", "%2e", "%2f", "%2F", "%5c", "\\", "%00", "?", "#", "&", "=", ";",
     "ws", "api", "static", "cameras", "demo", "healthz", "metrics", "cxrelay.js",
     "index.html", "setup.cfg", "etc", "passwd", "~", "*", "%", "%%", "token=", " "]
)
TEXT = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=60)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from([b"", b"/", *HOSTILE]), pieces=st.lists(PATH_CHARS, max_size=12),
       tail=st.binary(max_size=20),
       headers=st.lists(st.tuples(st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z"), TEXT),
                        max_size=6),
       upgrade=st.booleans())
async def test_fuzzed_requests_never_crash(
    relay: Relay, prefix: bytes, pieces: list[str], tail: bytes,
    headers: list[tuple[str, str]], upgrade: bool,
) -> None:
    junk = tail.replace(b"\r", b"").replace(b"\n", b"").replace(b" ", b"")
    target = prefix + ("/" + "".join(pieces)).replace(" ", "%20").encode() + junk
    lines = b"Host: 127.0.0.1\r\n" + b"".join(
        name.encode() + b": " + value.encode("latin-1") + b"\r\n" for name, value in headers
    )
    if upgrade:
        lines += (b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")
    assert_harmless(await send(port_of(relay), get(target, lines)))


async def test_healthy_after_a_barrage(relay: Relay) -> None:
    port = port_of(relay)
    replies = await asyncio.gather(*(send(port, get(t)) for t in HOSTILE * 3))
    assert {r.status for r in replies} == {404}
    await assert_healthy(port)


# --- issue 14: duplicate headers, methods, pipelining -----------------------------------------

UPGRADE = (b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def header(answer: bytes, name: bytes) -> bytes | None:
    head = answer.partition(b"\r\n\r\n")[0]
    return next((line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")[1:]
                 if line.lower().startswith(name.lower() + b":")), None)


@pytest.mark.parametrize("name", [b"Origin", b"Host", b"X-Forwarded-Proto"])
@pytest.mark.parametrize("upgrade", [True, False], ids=["upgrade", "verdict"])
async def test_duplicate_headers_get_400_and_one_log_line(relay: Relay, name: bytes,
                                                          upgrade: bool) -> None:
    values = {b"Origin": (b"http://127.0.0.1", b"http://evil.example.com"),
              b"Host": (b"127.0.0.1", b"evil.example.com"),
              b"X-Forwarded-Proto": (b"https", b"http")}[name]
    lines = b"".join(name + b": " + v + b"\r\n" for v in values)
    if name != b"Host":
        lines = b"Host: 127.0.0.1\r\n" + lines
    with capture_logs() as logs:
        answer = await send(port_of(relay), get(b"/ws/demo", lines + (UPGRADE if upgrade else b"")))
    assert answer.status == 400, answer.head
    assert answer.body == b"duplicate " + name + b" header\n"
    refusals = [e for e in logs if e["log_level"] in ("info", "warning", "error")]
    assert [(e["event"], e["reason"]) for e in refusals] == \
        [("request refused", f"duplicate {name.decode()} header")]
    # (the fixture asserts that websockets logged no error: no traceback)


@pytest.mark.parametrize("method", [b"DELETE", b"TRACE", b"PUT", b"OPTIONS", b"PATCH",
                                    b"CONNECT", b"BREW"])
@pytest.mark.parametrize("target", [b"/healthz", b"/ws/demo", b"/cxrelay.js", b"/nope"])
async def test_other_methods_get_405(relay: Relay, method: bytes, target: bytes) -> None:
    raw = method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + UPGRADE + b"\r\n"
    answer = await exchange(port_of(relay), raw)
    assert status_of(answer) == 405, answer[:200]
    assert header(answer, b"Allow") == b"GET, HEAD"
    assert answer.endswith(b"not allowed: this server answers GET and HEAD\n")


async def test_a_request_with_a_body_gets_405_not_silence(relay: Relay) -> None:
    """websockets' own parser drops a request with a body without a word."""
    answer = await exchange(port_of(relay), b"POST /api/cameras HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                            b"Content-Length: 5\r\n\r\nhello")
    assert status_of(answer) == 405, answer[:200]


@pytest.mark.parametrize("target", [b"/healthz", b"/cxrelay.js", b"/", b"/api/cameras",
                                    b"/metrics", b"/nope", b"/ws/demo", b"/ws/nocamera"])
async def test_head_answers_like_get_without_a_body(relay: Relay, target: bytes) -> None:
    port = port_of(relay)
    got = await exchange(port, get(target))
    headed = await exchange(port, b"HEAD" + get(target)[3:])
    body = headed.partition(b"\r\n\r\n")[2]
    assert body == b"", body[:100]
    assert status_of(headed) == status_of(got)
    assert header(headed, b"Content-Type") == header(got, b"Content-Type")
    length = header(headed, b"Content-Length")
    assert length is not None
    if target not in (b"/healthz", b"/metrics"):  # those change between two requests
        assert length == header(got, b"Content-Length")


async def test_head_never_upgrades(relay: Relay) -> None:
    answer = await exchange(port_of(relay), b"HEAD /ws/demo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                            + UPGRADE + b"\r\n")
    assert status_of(answer) == 426, answer[:200]  # the verdict: would be admitted
    assert answer.endswith(b"\r\n\r\n")


async def test_pipelined_requests_get_the_first_answer_then_a_clean_close(relay: Relay) -> None:
    """One request per connection: the first is answered whole (its
    Connection: close says the rest won't be), and nothing goes wrong."""
    answer = await exchange(port_of(relay), get(b"/healthz") + get(b"/cxrelay.js") +
                            get(b"/api/cameras"))
    assert status_of(answer) == 200, answer[:200]
    assert header(answer, b"Connection") == b"close"
    body = answer.partition(b"\r\n\r\n")[2]
    assert json.loads(body)["status"] == "ok"  # one whole answer, and only that one
    assert answer.count(b"HTTP/1.1 ") == 1


async def test_frames_sent_right_after_the_upgrade_are_kept(relay: Relay) -> None:
    """What follows the head of an upgrade is the WebSocket's own: once
    upgraded, websockets gets it (here: a close frame, answered in kind)."""
    mask = b"\x01\x02\x03\x04"
    close = b"\x88\x82" + mask + bytes(b ^ m for b, m in zip(b"\x03\xe8", mask[:2], strict=True))
    answer = await exchange(port_of(relay), get(b"/ws/demo", b"Host: 127.0.0.1\r\n" + UPGRADE)
                            + close)
    assert status_of(answer) == 101
    assert b"\x88\x02\x03\xe8" in answer.partition(b"\r\n\r\n")[2]  # close 1000, answered
