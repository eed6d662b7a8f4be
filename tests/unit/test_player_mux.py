"""The bundled player's own bitstream work, checked with a real decoder: its fMP4 muxer (the MSE
path) and what it hands VideoDecoder (the WebCodecs path), run under node on the recorded
streams (tests/unit/player_harness.mjs fakes just the browser around them), decode with PyAV
(FFmpeg) to the same pictures as the raw Annex B; its hvcC records equal cxrelay.h265's
build_hvcc; and after it skips to a CRA keyframe it never passes on the RASL pictures that
would decode to garbage."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import av
import pytest

from cxrelay.h264 import split_annexb
from cxrelay.h265 import PARAMETER_SETS, build_hvcc, nal_type
from tests.parts import command
from tests.recordings import Packet, recording

ROOT = Path(__file__).resolve().parents[2]
PLAYER = ROOT / "cxrelay" / "static" / "cxrelay.js"
HARNESS = Path(__file__).with_name("player_harness.mjs")

H265 = ["h265_main", "h265_bframes", "h265_sei_aud", "h265_slice_change", "h265_slices4",
        "h265_variant_422", "h265_variant_444", "h265_variant_main10", "h265_variant_scaling"]
H264 = ["baseline", "bframes", "sei_aud", "variant_444"]  # the same muxer, the other codec
RASL = (8, 9)


def suffix(name: str) -> str:
    return ".h265" if name.startswith("h265_") else ".h264"


def run_player(tmp_path: Path, mode: str, meta: dict[str, Any], packets: Sequence[Packet],
               behind: tuple[int, int] = (0, 0)) -> tuple[bytes, dict[str, Any]]:
    """Feeds `packets` to the player's output for `mode` under node; returns what it wrote (an
    fMP4 file, or JSON) and its stats. While feeding packets behind[0] <= i < behind[1], the
    fake browser says it is falling behind (the output then skips to the next keyframe)."""
    node = command("node", "nodejs")
    stream = tmp_path / "stream.bin"
    stream.write_bytes(b"".join(p.data for p in packets))
    out = tmp_path / f"{mode}.out"
    job = tmp_path / "job.json"
    job.write_text(json.dumps({
        "mode": mode, "codec": meta["codec"], "width": meta["width"], "height": meta["height"],
        "stream": str(stream), "out": str(out), "behind": list(behind),
        "frames": [[p.pts, len(p.data), p.keyframe] for p in packets]}))
    done = subprocess.run([node, str(HARNESS), str(PLAYER), str(job)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return out.read_bytes(), json.loads(done.stdout)


def picture(frame: av.VideoFrame) -> tuple[int, int, str, str]:
    """Size, pixel format and a digest of the visible pixels of every plane."""
    wide = 2 if any(c.bits > 8 for c in frame.format.components) else 1
    digest = hashlib.sha256()
    for plane in frame.planes:
        rows = memoryview(plane)
        for y in range(plane.height):
            digest.update(rows[y * plane.line_size:y * plane.line_size + plane.width * wide])
    return frame.width, frame.height, frame.format.name, digest.hexdigest()


def decode(codec: str, packets: Iterable[bytes], extradata: bytes | None = None,
           ) -> list[tuple[int, int, str, str]]:
    """Every picture a fresh FFmpeg decoder makes of these packets, flushed at the end."""
    context = av.CodecContext.create(codec, "r")
    if extradata:
        context.extradata = extradata
    out = []
    for data in [*packets, None]:
        out += [picture(f) for f in context.decode(av.Packet(data) if data else None)]
    return out


def codec_of(name: str) -> str:
    return "hevc" if name.startswith("h265_") else "h264"


def parameter_sets(unit: bytes) -> list[bytes]:
    return [nal for nal in split_annexb(unit) if nal_type(nal) in PARAMETER_SETS]


def slice_type(unit: bytes) -> int:
    return next(t for t in map(nal_type, split_annexb(unit)) if t < 32)


def decode_fmp4(data: bytes, tmp_path: Path) -> tuple[Any, list[tuple[int, int, str, str]]]:
    """The fMP4's stream and its pictures, in output order; their presentation times rise."""
    path = tmp_path / "player.mp4"
    path.write_bytes(data)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        times = [f.pts for f in frames]
        assert times == sorted(times) and len(set(times)) == len(times), \
            "presentation times must follow the decoder's output order"
        return stream.codec_context, [picture(f) for f in frames]


@pytest.mark.parametrize("name", H265 + H264)
def test_mse_fmp4_decodes_to_the_same_pictures_as_annex_b(name: str, tmp_path: Path) -> None:
    rec = recording(name, suffix(name))
    fmp4, stats = run_player(tmp_path, "mse", rec.meta, rec.packets)
    context, pictures = decode_fmp4(fmp4, tmp_path)
    expected = decode(codec_of(name), rec.units)
    assert stats["dropped"] == 0
    assert len(pictures) == len(expected) == len(rec.packets)
    assert pictures[0][:2] == (rec.meta["width"], rec.meta["height"])
    assert pictures == expected
    if name.startswith("h265_"):
        assert context.codec_tag == "hvc1"
        assert context.extradata == build_hvcc(parameter_sets(rec.packets[0].data))
    else:
        assert context.codec_tag == "avc1"


@pytest.mark.parametrize("name", H265 + H264[:2])
def test_webcodecs_chunks_decode_to_the_same_pictures_as_annex_b(name: str,
                                                                 tmp_path: Path) -> None:
    rec = recording(name, suffix(name))
    out, stats = run_player(tmp_path, "webcodecs", rec.meta, rec.packets)
    fed = json.loads(out)
    assert stats["dropped"] == 0
    # one configuration: the parameter sets never change in these recordings
    [config] = fed["configs"]
    assert config["codec"] == rec.meta["codec"]
    chunks = fed["chunks"]
    assert [(c["type"] == "key", c["timestamp"]) for c in chunks] == \
        [(p.keyframe, p.pts) for p in rec.packets]
    samples = [bytes.fromhex(c["data"]) for c in chunks]
    for sample, packet in zip(samples, rec.packets, strict=True):
        if packet.keyframe:  # length-prefixed, without the parameter sets of the description
            assert not parameter_sets(b"".join(b"\0\0\0\1" + n for n in units(sample)))
    pictures = decode(codec_of(name), samples, bytes.fromhex(config["description"]))
    assert pictures == decode(codec_of(name), rec.units)
    assert len(pictures) == len(rec.packets)


def units(sample: bytes) -> list[bytes]:
    """The NAL units of a length-prefixed sample; fails if the lengths don't add up."""
    out, i = [], 0
    while i < len(sample):
        n = int.from_bytes(sample[i:i + 4], "big")
        assert n > 0 and i + 4 + n <= len(sample), f"bad length {n} at {i}"
        out.append(sample[i + 4:i + 4 + n])
        i += 4 + n
    return out


@pytest.mark.parametrize("name", H265)
def test_hvcc_records_equal_build_hvcc(name: str, tmp_path: Path) -> None:
    rec = recording(name, ".h265")
    out, _ = run_player(tmp_path, "records", rec.meta, rec.packets)
    records = json.loads(out)
    for record, packet in zip(records, rec.packets, strict=True):
        sets = parameter_sets(packet.data)
        if len(sets) < 3:
            assert record is None  # no VPS, SPS and PPS: no record
        else:
            assert bytes.fromhex(record) == build_hvcc(sets)


def test_hvcc_of_truncated_parameter_sets_is_none_or_whole(tmp_path: Path) -> None:
    """A keyframe whose SPS is cut short anywhere gives no record or a well-formed one, and
    never throws."""
    rec = recording("h265_main", ".h265")
    vps, sps, pps = parameter_sets(rec.packets[0].data)
    cut = [b"".join(b"\0\0\0\1" + n for n in (vps, sps[:end], pps)) for end in range(3, len(sps))]
    packets = [Packet(i, data, True) for i, data in enumerate(cut)]
    out, _ = run_player(tmp_path, "records", rec.meta, packets)
    for end, record in zip(range(3, len(sps)), json.loads(out), strict=True):
        if record is not None:
            data = bytes.fromhex(record)
            assert data[0] == 1 and data[-len(pps):] == pps, end
        if end < 15:  # the two-byte header, one byte, then the 12 bytes of profile/tier/level
            assert record is None, end


@pytest.mark.parametrize("mode", ["mse", "webcodecs"])
def test_skipping_to_a_cra_drops_its_rasl_pictures(mode: str, tmp_path: Path) -> None:
    """Falling behind, the output skips to the next keyframe: in h265_bframes, a CRA followed by
    RASL pictures that reference frames before it, some of which were skipped. The decoder keeps
    going (no reset), so it would decode them from missing references (FFmpeg happens to hide
    them; other decoders need not): the output drops them, as a decoder starting at that CRA
    does. The pictures are then those of the frames before the skip and those of a fresh decoder
    started at the CRA, nothing else."""
    rec = recording("h265_bframes", ".h265")
    packets = rec.packets
    cra = next(i for i, p in enumerate(packets) if i and p.keyframe)
    assert nal_type(split_annexb(packets[cra].data)[-1]) == 21  # a CRA
    rasl = [i for i in range(cra + 1, len(packets)) if slice_type(packets[i].data) in RASL]
    assert rasl, "the recording has RASL pictures after its CRA"
    behind = (cra // 2, cra)
    out, stats = run_player(tmp_path, mode, rec.meta, packets, behind=behind)
    assert stats["dropped"] == behind[1] - behind[0] + len(rasl)
    codec = codec_of("h265_bframes")
    expected = decode(codec, rec.units[:behind[0]]) + decode(codec, rec.units[cra:])
    if mode == "mse":
        _, pictures = decode_fmp4(out, tmp_path)
        with av.open(str(tmp_path / "player.mp4")) as container:
            samples = [bytes(p) for p in container.demux(video=0) if p.size]
    else:
        fed = json.loads(out)
        samples = [bytes.fromhex(c["data"]) for c in fed["chunks"]]
        pictures = decode(codec, samples, bytes.fromhex(fed["configs"][0]["description"]))
    types = [next(t for t in map(nal_type, units(s)) if t < 32) for s in samples]
    assert len(types) == len(packets) - stats["dropped"]
    assert types[behind[0]] == 21 and not set(types[behind[0]:]) & set(RASL)
    assert len(pictures) == len(expected)
    assert pictures == expected
