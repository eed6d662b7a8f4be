"""How the player feeds WebCodecs, in every engine: H.264 as an avcC description plus
length-prefixed samples (what Safari needs), with bitstream_restriction added to an SPS that
lacks it when pictures cannot be reordered; and a decoder the browser reclaims is replaced at
the next keyframe without an error."""

from __future__ import annotations

import json
import time
from unittest.mock import patch

import pytest

from cxrelay.h264 import syntax
from cxrelay.h264.bits import BitReader, split_annexb, to_annexb, unescape_rbsp
from tests.browser.conftest import Daemon, FakeRelay, Site
from tests.browser.engines import Page
from tests.browser.pages import events, open_player, stats, wait_painted, wait_until
from tests.recordings import recording

pytestmark = pytest.mark.browser

# Records what the player gives VideoDecoder, and lets the test reclaim a decoder the way a
# browser does (closed, then its error callback with a QuotaExceededError).
SPY = """() => {
  const Real = VideoDecoder;
  window.decoders = [];
  window.configs = [];
  window.keyChunks = [];
  window.VideoDecoder = class extends Real {
    constructor(init) {
      super(init);
      this.reclaim = () => {
        this.close();
        init.error(new DOMException('reclaimed by the test', 'QuotaExceededError'));
      };
      decoders.push(this);
    }
    configure(config) {
      const d = config.description && new Uint8Array(config.description);
      configs.push({codec: config.codec, latency: config.optimizeForLatency,
                    description: d ? Array.from(d) : null});
      return super.configure(config);
    }
    decode(chunk) {
      if (chunk.type === 'key' && keyChunks.length < 3) {
        const b = new Uint8Array(chunk.byteLength);
        chunk.copyTo(b);
        keyChunks.push(Array.from(b));
      }
      return super.decode(chunk);
    }
  };
}"""


def show(page: Page, site: Site, daemon: Daemon, src: str = "") -> None:
    """A player of the demo camera (or of the WebSocket `src`), its decoders spied on."""
    player = (f'<cxrelay-player src="{src}"></cxrelay-player>' if src
              else '<cxrelay-player camera="demo"></cxrelay-player>')
    open_player(page, site.secure, daemon.url, player, SPY)
    if not src:
        wait_painted(page, 3)


def errors(page: Page) -> list[str]:
    return [e[1] for e in events(page) if e[0] == "error"]


def units(sample: list[int]) -> list[list[int]]:
    """The NAL units of a length-prefixed sample; fails if the lengths don't add up."""
    out, i = [], 0
    while i < len(sample):
        n = int.from_bytes(bytes(sample[i:i + 4]), "big")
        assert n > 0 and i + 4 + n <= len(sample), f"bad length {n} at {i}"
        out.append(sample[i + 4:i + 4 + n])
        i += 4 + n
    return out


def test_h264_goes_in_as_avcc(page: Page, site: Site, demo: Daemon) -> None:
    show(page, site, demo)
    codec = stats(page)["codec"]
    configs = page.evaluate("() => configs")
    assert configs, "the decoder was never configured"
    config = configs[0]
    assert config["codec"] == codec and config["latency"] is True
    avcc = config["description"]
    assert avcc, "no avcC description"
    # version 1, profile/compatibility/level as in the codec string, 4-byte lengths, 1+ SPS
    assert avcc[0] == 1 and bytes(avcc[1:4]).hex() == codec.split(".")[1]
    assert avcc[4] == 0xFF and avcc[5] & 0x1F >= 1
    sps_length = int.from_bytes(bytes(avcc[6:8]), "big")
    assert avcc[8] & 0x1F == 7 and avcc[8 + 1:8 + 4] == avcc[1:4]
    assert avcc[8 + sps_length] >= 1  # PPS count
    assert avcc[8 + sps_length + 3] & 0x1F == 8
    # keyframes: length-prefixed, the parameter sets only in the description, the IDR slice in
    key = page.evaluate("() => keyChunks")[0]
    types = [unit[0] & 0x1F for unit in units(key)]
    assert 5 in types and 7 not in types and 8 not in types, types
    assert errors(page) == []


def test_reclaimed_decoder_is_replaced_at_the_next_keyframe(page: Page, site: Site,
                                                            demo: Daemon) -> None:
    show(page, site, demo)
    page.evaluate("() => decoders[decoders.length - 1].reclaim()")
    before = stats(page)["painted"]
    # the demo camera sends a keyframe every 2 s: a new decoder, configured, painting again
    page.wait_for("(n) => document.querySelector('cxrelay-player').stats.painted >= n + 10",
                  before, timeout=20, what="10 more frames painted")
    assert page.evaluate("() => decoders.length") == 2
    assert page.evaluate("() => decoders[1].state") == "configured"
    assert page.evaluate("() => configs.length") >= 2
    assert page.evaluate("() => document.querySelector('cxrelay-player').state") == "live"
    assert errors(page) == []  # reclaiming is the browser's right, not a failure


# --- bitstream_restriction --------------------------------------------------------------------


def without_restriction(sps: bytes) -> bytes:
    """The SPS with its VUI bitstream_restriction_flag cleared and the fields after it gone, as
    many cameras send it. The flag's place comes from the project's own parser: it is the last
    flag the VUI reads."""
    flags: list[int] = []

    class Recorder(BitReader):
        def flag(self) -> bool:
            flags.append(self.pos)
            return super().flag()

    with patch.object(syntax, "BitReader", Recorder):
        assert syntax.parse_sps(sps).max_num_reorder_frames is not None
    bits = "".join(f"{b:08b}" for b in unescape_rbsp(sps[1:]))
    assert bits[flags[-1]] == "1"
    rbsp = bits[:flags[-1]] + "01"  # flag cleared, rbsp_stop_one_bit
    rbsp += "0" * (-len(rbsp) % 8)
    out, zeros = bytearray(sps[:1]), 0
    for byte in int(rbsp, 2).to_bytes(len(rbsp) // 8, "big"):
        if zeros >= 2 and byte <= 3:
            out.append(3)  # emulation prevention
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    stripped = bytes(out)
    assert syntax.parse_sps(stripped).max_num_reorder_frames is None
    return stripped


def frames_without_restriction(name: str, monotonic: bool = False) -> tuple[str, list[bytes]]:
    """A recording as protocol v1 binary messages, its SPS without bitstream_restriction. With
    `monotonic`, pts follow decode order (as if the stream had no B-frames)."""
    rec = recording(name)
    messages = []
    for i, packet in enumerate(rec.packets):
        units = [without_restriction(n) if n[0] & 0x1F == 7 else n
                 for n in split_annexb(packet.data)]
        pts = i * 40_000 if monotonic else packet.pts
        header = (bytes([1 if packet.keyframe else 0]) + pts.to_bytes(8, "big", signed=True)
                  + int(time.time() * 1e6).to_bytes(8, "big"))
        messages.append(header + to_annexb(units))
    return rec.meta["codec"], messages


def play_fake(page: Page, site: Site, daemon: Daemon, fake_relay: FakeRelay, codec: str,
              messages: list[bytes]) -> None:
    """Plays `messages` from a fake relay to a player, one every 40 ms."""
    show(page, site, daemon, src=fake_relay.url)
    wait_until(lambda: fake_relay.sockets, 10, "the player's socket")
    size = {"avc1.42c01e": (640, 360), "avc1.64001f": (1280, 720)}[codec]
    ws = fake_relay.sockets[0]
    ws.send(json.dumps({"type": "init", "protocol": 1, "camera": "fake", "codec": codec,
                        "width": size[0], "height": size[1]}))
    ws.send(json.dumps({"type": "status", "state": "live"}))
    for message in messages:
        ws.send(message)
        time.sleep(0.04)
    time.sleep(0.5)


def configured_sps(page: Page) -> list[syntax.Sps]:
    """The first SPS of each avcC the decoder was configured with."""
    out = []
    for config in page.evaluate("() => configs"):
        avcc = bytes(config["description"])
        length = int.from_bytes(avcc[6:8], "big")
        out.append(syntax.parse_sps(avcc[8:8 + length]))
    return out


def test_restriction_added_when_pictures_cannot_reorder(page: Page, site: Site, demo: Daemon,
                                                        fake_relay: FakeRelay) -> None:
    """POC type 2: display order is decode order, so no picture need wait: say so at once."""
    codec, messages = frames_without_restriction("baseline")
    play_fake(page, site, demo, fake_relay, codec, messages)
    original = syntax.parse_sps(next(n for n in split_annexb(recording("baseline").units[0])
                                     if n[0] & 0x1F == 7))
    first = configured_sps(page)[0]
    assert first.pic_order_cnt_type == 2 and first.max_num_reorder_frames == 0
    for field in ("codec", "width", "height", "fps", "log2_max_frame_num", "sar"):
        assert getattr(first, field) == getattr(original, field), field
    # and the engine decodes with it (decoded, not painted: a loaded machine paints fewer)
    assert stats(page)["decoded"] >= 30
    assert errors(page) == []


def test_reordering_stream_keeps_its_sps(page: Page, site: Site, demo: Daemon,
                                         fake_relay: FakeRelay) -> None:
    """B-frames (POC type 0, pts out of order): the SPS stays as the camera sent it."""
    codec, messages = frames_without_restriction("bframes")
    play_fake(page, site, demo, fake_relay, codec, messages)
    configs = configured_sps(page)
    assert configs and all(sps.max_num_reorder_frames is None for sps in configs), configs
    assert stats(page)["decoded"] >= 20


def test_a_gop_in_order_earns_the_restriction(page: Page, site: Site, demo: Daemon,
                                              fake_relay: FakeRelay) -> None:
    """POC type 0 could reorder: the player adds the restriction only at the keyframe after a
    whole GOP came in order (here the B-frame recording with pts in decode order)."""
    codec, messages = frames_without_restriction("bframes", monotonic=True)
    play_fake(page, site, demo, fake_relay, codec, messages)
    configs = configured_sps(page)
    assert [sps.max_num_reorder_frames for sps in configs] == [None, 0], configs
