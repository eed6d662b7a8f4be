"""Whole NAL units out of FFmpeg's RTP packets. Pure: no I/O.

With the parser off (``fflags=+noparse``) FFmpeg hands over each RTP payload
as it comes. A NAL unit too big for one packet arrives fragmented (H.264's
FU-A, H.265's FU): the first fragment starts with a start code and the NAL
unit header FFmpeg rebuilt from the fragmentation header, the rest are bare
continuation bytes.
RTSP gives no end-of-NAL flag, so waiting for the next packet would cost a
whole frame whenever the picture's last slice is fragmented.

Payloaders (GStreamer's, FFmpeg's, cameras') fill every fragment to the same
size but the last, which is shorter. So a NAL unit whose latest piece is
shorter than the learned fragment size is complete now; one whose piece is
full-size may go on, and is held until the next packet or the idle timer.
"""

from __future__ import annotations

from dataclasses import dataclass

# Before any fragment has been seen, a NAL unit this big may be a first
# fragment: no camera's MTU leaves less room than this for one. Whole NAL
# units seen raise the bar: a packet that carried one that big carries first
# fragments at least as big, less a byte. (Holding a whole NAL unit by
# mistake makes its picture wait for the next packet.)
_UNKNOWN_FRAGMENT_GUESS = 400


@dataclass(slots=True)
class NalChunk:
    data: bytes  # Annex B: complete NAL units with start codes (or orphaned bytes: junk)
    pts_us: int
    ingest_us: int  # arrival of the packet that completed it


def _starts_with_start_code(data: bytes) -> bool:
    return data[:3] == b"\x00\x00\x01" or data[:4] == b"\x00\x00\x00\x01"


def _last_nal_length(data: bytes) -> int:
    """Length of the last NAL unit in an Annex B buffer (header included)."""
    start = data.rfind(b"\x00\x00\x01")
    return len(data) - (start + 3) if start >= 0 else len(data)


class FragmentJoiner:
    def __init__(self, header_size: int = 1) -> None:
        """``header_size``: bytes of the codec's NAL unit header (H.264 1, H.265 2)."""
        self._header_size = header_size
        self._parts: list[bytes] = []
        self._pts = 0
        self._ingest = 0
        self._open = False  # the last NAL unit may still get continuation bytes
        self._first_len = 0  # length of the last NAL unit of the latest start packet
        self.fragment_size = 0  # learned: the size of a full continuation packet
        self._smallest_first = _UNKNOWN_FRAGMENT_GUESS  # while fragment_size is unknown

    @property
    def pending(self) -> bool:
        """Bytes are held back because their NAL unit may not be complete yet."""
        return bool(self._parts)

    def push(self, data: bytes, pts_us: int, ingest_us: int) -> list[NalChunk]:
        """Take one packet; return the NAL units it completes, in order."""
        if not data:
            return []
        if not _starts_with_start_code(data):
            return self._continue(data, ingest_us)
        if len(self._parts) == 1:
            # The NAL unit held got no continuation: it was whole.
            self._smallest_first = max(self._smallest_first, self._first_len - 1)
        out = self.flush()
        self._parts = [data]
        self._pts = pts_us
        self._ingest = ingest_us
        last = self._first_len = _last_nal_length(data)
        if self.fragment_size:
            # A first fragment holds the rebuilt NAL header plus one full fragment.
            self._open = last >= self.fragment_size + self._header_size
        else:
            self._open = last >= self._smallest_first
        if not self._open:
            out.extend(self.flush())
        return out

    def _continue(self, data: bytes, ingest_us: int) -> list[NalChunk]:
        if not self._parts:
            # Nothing held to join these bytes to: their first fragment was lost,
            # or went out as whole before the fragment size was known. They go
            # on as they are, without a start code: junk that makes the
            # assembler drop their picture rather than send it cut short.
            # A continuation is never longer than a full fragment.
            self.fragment_size = max(self.fragment_size, len(data))
            return [NalChunk(data, self._pts, ingest_us)]
        if len(self._parts) == 1:
            # Its start packet was a first fragment, and first fragments are
            # full: the rebuilt NAL header plus exactly one fragment's bytes.
            # (Learning from continuations alone would take a short last
            # fragment for the full size, and hold back every NAL unit above it.)
            self.fragment_size = max(self.fragment_size, self._first_len - self._header_size)
        self.fragment_size = max(self.fragment_size, len(data))
        self._parts.append(data)
        self._ingest = ingest_us
        self._open = len(data) >= self.fragment_size
        return [] if self._open else self.flush()

    def flush(self) -> list[NalChunk]:
        """Give up waiting: whatever is held is taken as complete."""
        if not self._parts:
            return []
        data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts = []
        self._open = False
        return [NalChunk(data, self._pts, self._ingest)]

    def reset(self) -> None:
        self._parts = []
        self._open = False
