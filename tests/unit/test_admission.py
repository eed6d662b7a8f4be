"""cxrelay.connection.Admission: who gets in at the accept, who is cut to make
room, and the log of it (issue 14, fault 3). Fake connections and a fake
clock; the real thing against a real process is tests/integration/test_descriptors.py."""

from __future__ import annotations

import asyncio
from http import HTTPStatus

import pytest
from structlog.testing import capture_logs

from cxrelay import connection as module
from cxrelay.access import Handshakes
from cxrelay.connection import STALE, Admission, Descriptors


class FakeConnection:
    def __init__(self, admission: Admission, peer: str) -> None:
        self.admission = admission
        self.peer = peer
        self.refused: tuple[HTTPStatus, str] | None = None

    def refuse(self, status: HTTPStatus, reason: str) -> None:
        self.refused = (status, reason)
        self.admission.ended(self)  # type: ignore[arg-type]


class FakeDescriptors(Descriptors):
    def __init__(self, limit: int = 1000, in_use: int = 10) -> None:
        super().__init__(spare=100, count=lambda: None)
        self.limit, self.in_use = limit, in_use

    def short(self, sockets: int, now: float) -> bool:
        return self.in_use + self.spare >= self.limit


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    return now


def admission(per_client: int = 0, total: int = 0, **descriptors: int) -> Admission:
    return Admission(Handshakes(per_client, total), descriptors=FakeDescriptors(**descriptors))


def arrive(gate: Admission, peer: str = "10.0.0.1") -> tuple[FakeConnection, str | None, bool]:
    connection = FakeConnection(gate, peer)
    reason, now = gate.admit(connection)  # type: ignore[arg-type]
    return connection, reason, now


async def test_full_refuses_newcomers_until_someone_is_stale(clock: list[float]) -> None:
    gate = admission(total=2)
    first, _, _ = arrive(gate, "10.0.0.1")
    arrive(gate, "10.0.0.2")
    with capture_logs():
        _, reason, now = arrive(gate, "10.0.0.3")
    assert (reason, now) == ("too many connections in their handshake (maximum 2)", True)
    assert gate.handshakes.total == 2  # nothing counted for the refused one
    clock[0] += STALE
    with capture_logs():
        newcomer, reason, now = arrive(gate, "10.0.0.3")
    assert (reason, now) == (None, False)
    assert first.refused is not None and first.refused[0] == HTTPStatus.REQUEST_TIMEOUT
    assert gate.handshakes.total == 2 and newcomer in gate.pending
    assert gate.refused == 2


async def test_a_connection_whose_request_came_is_never_cut(clock: list[float]) -> None:
    gate = admission(total=1)
    answering, _, _ = arrive(gate)
    gate.pending.pop(answering)  # its request arrived (a slow snapshot, say)
    clock[0] += 10 * STALE
    with capture_logs():
        _, reason, now = arrive(gate, "10.0.0.2")
    assert now and reason is not None and answering.refused is None


async def test_short_of_descriptors(clock: list[float]) -> None:
    gate = admission(limit=200, in_use=150)
    with capture_logs():
        _, reason, now = arrive(gate)
    assert (reason, now) == ("server busy: out of file descriptors", True)
    gate.descriptors.in_use = 50  # type: ignore[misc]
    waiting, _, _ = arrive(gate)
    gate.descriptors.in_use = 150  # type: ignore[misc]
    clock[0] += STALE
    with capture_logs():
        _, reason, now = arrive(gate, "10.0.0.2")
    assert (reason, now) == (None, False) and waiting.refused is not None


async def test_past_its_own_bound_a_client_is_on_probation_unless_pressed(
        clock: list[float]) -> None:
    gate = admission(per_client=1, limit=1000, in_use=10)
    arrive(gate)
    _, reason, now = arrive(gate)
    assert reason == "too many connections from 10.0.0.1 in their handshake (maximum 1)"
    assert not now and gate.handshakes.count("10.0.0.1") == 2  # counted: on probation
    assert arrive(gate, "10.0.0.2")[1:] == (None, False)  # others are not affected
    gate.descriptors.in_use = 600  # type: ignore[misc]  # more than half
    with capture_logs():
        _, reason, now = arrive(gate)
    assert now and gate.handshakes.count("10.0.0.1") == 2


async def test_refusals_are_logged_once_a_period(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "REFUSALS_LOGGED_EVERY", 0.2)
    gate = admission(total=1)
    arrive(gate)
    with capture_logs() as logs:
        for _ in range(50):
            arrive(gate, "10.0.0.9")
        assert [e["refused"] for e in logs] == [1]  # the first at once ...
        await asyncio.sleep(0.5)
        assert [e["refused"] for e in logs] == [1, 49]  # ... the rest in one line
    assert logs[0]["event"] == "connections refused" and logs[0]["log_level"] == "warning"
    assert logs[1]["reason"] == "too many connections in their handshake (maximum 1)"


def test_descriptors_count_sockets_between_measurements(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module.resource, "getrlimit", lambda _: (1000, 1000))
    counted = [40]
    descriptors = Descriptors(spare=100, count=lambda: counted[0])
    assert not descriptors.short(sockets=30, now=0.0)  # 40 open, 30 of them sockets
    assert descriptors.in_use == 40
    # Between two counts, the sockets opened since are added to the others (10).
    assert not descriptors.short(sockets=400, now=0.5) and descriptors.in_use == 410
    assert not descriptors.pressed
    # Near the limit, every new connection is counted again.
    counted[0] = 905
    assert descriptors.short(sockets=895, now=0.6) and descriptors.in_use == 905
    assert descriptors.pressed
    counted[0] = 600
    assert not descriptors.short(sockets=590, now=0.7) and descriptors.in_use == 600
