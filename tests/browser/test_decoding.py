"""How the player feeds WebCodecs, in Debian's chromium: H.264 as an avcC description plus
length-prefixed samples (what Safari needs), and a decoder the browser reclaims is replaced at
the next keyframe without an error."""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import Daemon

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


def show(page: Any, daemon: Daemon) -> None:
    page.add_init_script(SPY)
    page.route(daemon.url + "/api/cameras", lambda route: route.fulfill(json=[]))
    page.goto(daemon.url + "/")
    page.evaluate("""() => {
      window.errors = [];
      const el = document.createElement('cxrelay-player');
      el.setAttribute('camera', 'demo');
      el.addEventListener('error', (e) => errors.push(e.detail.message));
      document.body.prepend(el);
    }""")
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
