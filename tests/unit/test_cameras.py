"""The cameras registry as a single piece: hubs that are never started (so no
source exists) and viewers that only record what the hub asks of them."""

from __future__ import annotations

from cxrelay.backlog import BacklogLimits
from cxrelay.cameras import Cameras
from cxrelay.config import CameraConfig, Config, ServerConfig, plan_reload
from cxrelay.hub import Subscriber
from cxrelay.metrics import Metrics
from cxrelay.wire import Outgoing


class RecordingViewer:
    def __init__(self) -> None:
        self.texts: list[str] = []
        self.closed: tuple[int, str] | None = None

    def join(self, first: list[str], catchup: list[bytes]) -> None:
        self.texts += first

    def send_text(self, text: str) -> None:
        self.texts.append(text)

    def send_frame(self, frame: Outgoing) -> int:
        return 0

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


async def test_counts_across_cameras_and_applies_a_reload() -> None:
    cameras = Cameras(Metrics(), BacklogLimits())
    a = cameras.add(CameraConfig("a", "rtsp://h/a"))
    b = cameras.add(CameraConfig("b", "rtsp://h/b"))
    viewers = [RecordingViewer() for _ in range(3)]
    subscriber: Subscriber = viewers[0]  # all the hub knows of a viewer
    a.attach(subscriber)
    a.attach(viewers[1])
    b.attach(viewers[2])
    assert cameras.viewers == 3 and cameras.live == 0
    assert set(cameras) == {"a", "b"} and cameras.get("c") is None and len(cameras) == 2

    old = Config(cameras=(a.camera, b.camera))
    new = Config(server=ServerConfig(viewer_max_bytes=1 << 20),
                 cameras=(CameraConfig("c", "rtsp://h/c", on_demand=True), b.camera))
    await cameras.apply(plan_reload(old, new))
    assert list(cameras) == ["b", "c"]
    assert viewers[0].closed == viewers[1].closed == (1001, "camera removed from the configuration")
    assert viewers[2].closed is None and cameras.viewers == 1
    assert cameras["c"].state == "idle"  # on demand: nobody watches yet
    assert {hub.new_backlog().max_bytes for hub in cameras.values()} == {1 << 20}

    await cameras.close("server shutting down")
    assert viewers[2].closed == (1001, "server shutting down")
