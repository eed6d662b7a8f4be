"""How the player feeds WebCodecs, in Debian's chromium: H.264 as an avcC description plus
length-prefixed samples (what Safari needs), with bitstream_restriction added to an SPS that
lacks it when pictures cannot be reordered; and a decoder the browser reclaims is replaced at
the next keyframe without an error."""

from __future__ import annotations

import json
import re
import time
from typing import Any
from unittest.mock import patch

from cxrelay.h264 import syntax
from cxrelay.h264.bits import BitReader, split_annexb, to_annexb, unescape_rbsp
from tests.browser.conftest import Daemon
from tests.recordings import recording

# Records what the player gives VideoDecoder, and lets the test reclaim a decoder the way a
# browser does (closed, then its error callback with a QuotaExceededError).
SPY = """(() => {
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
})();"""


def show(page: Any, daemon: Daemon, camera: str = "demo") -> None:
    page.add_init_script(SPY)
    page.route(daemon.url + "/api/cameras", lambda route: route.fulfill(json=[]))
    page.goto(daemon.url + "/")
    page.evaluate("""(camera) => {
      window.errors = [];
      const el = document.createElement('cxrelay-player');
      el.setAttribute('camera', camera);
      el.addEventListener('error', (e) => errors.push(e.detail.message));
      document.body.prepend(el);
    }""", camera)
    if camera == "demo":
        page.wait_for_function("document.querySelector('cxrelay-player')?.stats.painted >= 3")


def units(sample: list[int]) -> list[list[int]]:
    """The NAL units of a length-prefixed sample; fails if the lengths don't add up."""
    out, i = [], 0
    while i < len(sample):
        n = int.from_bytes(bytes(sample[i:i + 4]), "big")
        assert n > 0 and i + 4 + n <= len(sample), f"bad length {n} at {i}"
        out.append(sample[i + 4:i + 4 + n])
        i += 4 + n
    return out


def test_h264_goes_in_as_avcc(page: Any, demo: Daemon) -> None:
    show(page, demo)
    stats = page.eval_on_selector("cxrelay-player", "el => el.stats")
    configs = page.evaluate("configs")
    assert configs, "the decoder was never configured"
    config = configs[0]
    assert config["codec"] == stats["codec"] and config["latency"] is True
    avcc = config["description"]
    assert avcc, "no avcC description"
    # version 1, profile/compatibility/level as in the codec string, 4-byte lengths, 1+ SPS
    assert avcc[0] == 1 and bytes(avcc[1:4]).hex() == stats["codec"].split(".")[1]
    assert avcc[4] == 0xFF and avcc[5] & 0x1F >= 1
    sps_length = int.from_bytes(bytes(avcc[6:8]), "big")
    assert avcc[8] & 0x1F == 7 and avcc[8 + 1:8 + 4] == avcc[1:4]
    assert avcc[8 + sps_length] >= 1  # PPS count
    assert avcc[8 + sps_length + 3] & 0x1F == 8
    # keyframes: length-prefixed, the parameter sets only in the description, the IDR slice in
    key = page.evaluate("keyChunks")[0]
    types = [unit[0] & 0x1F for unit in units(key)]
    assert 5 in types and 7 not in types and 8 not in types, types
    assert page.evaluate("errors") == []


def test_reclaimed_decoder_is_replaced_at_the_next_keyframe(page: Any, demo: Daemon) -> None:
    show(page, demo)
    player = "document.querySelector('cxrelay-player')"
    page.evaluate("decoders[decoders.length - 1].reclaim()")
    before = page.evaluate(f"{player}.stats.painted")
    # the demo camera sends a keyframe every 2 s: a new decoder, configured, painting again
    page.wait_for_function(f"{player}.stats.painted >= {before} + 10", timeout=15000)
    assert page.evaluate("decoders.length") == 2
    assert page.evaluate("decoders[1].state") == "configured"
    assert page.evaluate("configs.length") >= 2
    assert page.evaluate(f"{player}.state") == "live"
    assert page.evaluate("errors") == []  # reclaiming is the browser's right, not a failure


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


def play_fake(page: Any, daemon: Daemon, codec: str, messages: list[bytes]) -> None:
    """Plays `messages` from a fake relay to a player, one every 40 ms."""
    sockets: list[Any] = []
    page.route_web_socket(re.compile(r".*/ws/fake(\?.*)?$"), lambda ws: sockets.append(ws))
    show(page, daemon, camera="fake")
    page.wait_for_function("document.querySelector('cxrelay-player').state !== 'idle'")
    deadline = time.monotonic() + 10
    while not sockets and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    size = {"avc1.42c01e": (640, 360), "avc1.64001f": (1280, 720)}[codec]
    sockets[0].send(json.dumps({"type": "init", "protocol": 1, "camera": "fake", "codec": codec,
                                "width": size[0], "height": size[1]}))
    sockets[0].send(json.dumps({"type": "status", "state": "live"}))
    for message in messages:
        sockets[0].send(message)
        page.wait_for_timeout(40)
    page.wait_for_timeout(500)


def configured_sps(page: Any) -> list[syntax.Sps]:
    """The first SPS of each avcC the decoder was configured with."""
    out = []
    for config in page.evaluate("configs"):
        avcc = bytes(config["description"])
        length = int.from_bytes(avcc[6:8], "big")
        out.append(syntax.parse_sps(avcc[8:8 + length]))
    return out


def test_restriction_added_when_pictures_cannot_reorder(page: Any, demo: Daemon) -> None:
    """POC type 2: display order is decode order, so no picture need wait: say so at once."""
    codec, messages = frames_without_restriction("baseline")
    play_fake(page, demo, codec, messages)
    original = syntax.parse_sps(next(n for n in split_annexb(recording("baseline").units[0])
                                     if n[0] & 0x1F == 7))
    first = configured_sps(page)[0]
    assert first.pic_order_cnt_type == 2 and first.max_num_reorder_frames == 0
    for field in ("codec", "width", "height", "fps", "log2_max_frame_num", "sar"):
        assert getattr(first, field) == getattr(original, field), field
    # and Chromium decodes with it
    assert page.eval_on_selector("cxrelay-player", "el => el.stats.painted") >= 30
    assert page.evaluate("errors") == []


def test_reordering_stream_keeps_its_sps(page: Any, demo: Daemon) -> None:
    """B-frames (POC type 0, pts out of order): the SPS stays as the camera sent it."""
    codec, messages = frames_without_restriction("bframes")
    play_fake(page, demo, codec, messages)
    configs = configured_sps(page)
    assert configs and all(sps.max_num_reorder_frames is None for sps in configs), configs
    assert page.eval_on_selector("cxrelay-player", "el => el.stats.painted") >= 20


def test_a_gop_in_order_earns_the_restriction(page: Any, demo: Daemon) -> None:
    """POC type 0 could reorder: the player adds the restriction only at the keyframe after a
    whole GOP came in order (here the B-frame recording with pts in decode order)."""
    codec, messages = frames_without_restriction("bframes", monotonic=True)
    play_fake(page, demo, codec, messages)
    configs = configured_sps(page)
    assert [sps.max_num_reorder_frames for sps in configs] == [None, 0], configs
