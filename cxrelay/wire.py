"""The server-to-client video path's side of websockets: bytes framed once,
and a connection that tells its viewer when its socket drains.

A server's WebSocket frames are unmasked and compression is off, so a frame's
bytes on the wire are the same for every viewer: ``Outgoing`` holds them, built
once by the hub, and each viewer writes them straight to its transport.
websockets keeps everything else (handshake, pings, pongs, close, all that a
client sends) through ``RelayConnection``, a subclass given to ``serve()`` as
its documented ``create_connection``. It adds only asyncio protocol callbacks:

- ``resume_writing``: the transport's buffer drained to the low-water mark; the
  viewer's drain task, if it has one waiting, is woken.
- ``pause_writing``: when the buffer went above the high-water mark, for the
  drain timeout (a viewer that never reads).
- ``data_received``: how many bytes websockets queued in answer to the client
  (pongs) while its socket was not draining (a ping flood).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from cxrelay.protocol import HEADER

OPEN = State.OPEN

# The transport's write buffer: a viewer's frames go straight to it while it
# holds at most HIGH_WATER bytes; past that, they wait in the viewer's backlog
# until it has drained to LOW_WATER (asyncio's pause/resume_writing). Small:
# the kernel's socket buffer holds the rest of what is in flight, and bytes
# here can no longer be dropped for a keyframe.
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024


def binary_frame(message: bytes) -> bytes:
    """A server's binary WebSocket frame, exactly as websockets would write it
    (unmasked, no extensions: compression is off)."""
    return Frame(Opcode.BINARY, message).serialize(mask=False, extensions=[])


def text_frame(text: str) -> bytes:
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])


@dataclass(slots=True, eq=False)
class Outgoing:
    """One live frame as every viewer gets it: the protocol message and its
    WebSocket bytes, built once. ``delivered`` counts the viewers that wrote it
    straight to their transport (the hub reports them in one go). ``handed_us``
    (wall clock) is when the fan-out handed it to viewers: their link is judged
    from then, as what it waited before (a busy or starved relay) was not the
    link's doing."""

    message: bytes
    wire: bytes
    keyframe: bool
    ingest_us: int
    handed_us: int
    delivered: int = 0

    @classmethod
    def frame(cls, message: bytes, *, keyframe: bool) -> Outgoing:
        return cls(message, binary_frame(message), keyframe, HEADER.unpack_from(message)[2],
                   time.time_ns() // 1000)


class RelayConnection(ServerConnection):
    """websockets' server connection, with the flow-control callbacks the video
    path needs (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raw: asyncio.Transport | None = None
        self.paused_since: float | None = None  # loop time the buffer went above high water
        # Bytes websockets queued answering the client since the socket last drained.
        self.unread_replies = 0
        self.on_drained: Callable[[], None] | None = None
        self.on_paused: Callable[[], None] | None = None
        self.on_replies: Callable[[int], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.raw = cast(asyncio.Transport, transport)

    def pause_writing(self) -> None:
        super().pause_writing()
        self.paused_since = self.loop.time()
        if self.on_paused is not None:
            self.on_paused()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.paused_since = None
        self.unread_replies = 0
        if self.on_drained is not None:
            self.on_drained()

    def data_received(self, data: bytes) -> None:
        raw = self.raw
        before = raw.get_write_buffer_size() if raw is not None else 0
        super().data_received(data)
        if raw is None:
            return
        grown = raw.get_write_buffer_size() - before
        if grown > 0 and self.paused_since is not None:
            self.unread_replies += grown
            if self.on_replies is not None:
                self.on_replies(self.unread_replies)
