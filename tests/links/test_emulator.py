"""The link emulator shapes what it claims to: rate, delay, loss, outages; and the
namespaces go away afterwards, whatever happens. Lower bounds are exact physics (a
packet can't beat the link); upper bounds have wide margins for a loaded machine."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from tests.links.netns import NETNS_DIR, NetnsLink, in_namespace

pytestmark = pytest.mark.links


def listener(link: NetnsLink, kind: int = socket.SOCK_STREAM, port: int = 9000) -> socket.socket:
    """A socket bound on the relay side of the link."""

    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, kind)
        s.bind((link.relay_ip, port))
        if kind == socket.SOCK_STREAM:
            s.listen()
        return s

    sock: socket.socket = in_namespace(link.relay_ns, make)
    return sock


def bulk_rate(link: NetnsLink, size: int) -> float:
    """bit/s of `size` bytes sent relay -> client through the link, as the client sees it."""
    server = listener(link)
    with server:
        def send() -> None:
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"x" * size)

        sender = threading.Thread(target=send)
        sender.start()
        client = link.client_socket(9000)
        client.setblocking(True)
        received = 0
        first = last = 0.0
        with client:
            while chunk := client.recv(65536):
                last = time.monotonic()
                first = first or last
                received += len(chunk)
        sender.join()
    assert received == size
    return received * 8 / (last - first)


def test_rate(link: NetnsLink) -> None:
    link.shape(rate=1_000_000)
    rate = bulk_rate(link, 250_000)
    assert 0.6e6 < rate < 1.05e6, rate  # TCP/IP headers take a few percent


def test_delay(link: NetnsLink) -> None:
    server = listener(link)
    with server:
        started = time.monotonic()
        link.client_socket(9000).close()  # one round trip
        unshaped = time.monotonic() - started
        link.shape(delay=0.15)
        started = time.monotonic()
        link.client_socket(9000).close()
        shaped = time.monotonic() - started
    assert shaped >= 0.15
    assert shaped - unshaped < 1.0


def test_loss_and_outage(link: NetnsLink) -> None:
    receiver = listener(link, socket.SOCK_DGRAM)

    def make_sender() -> socket.socket:
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    sender: socket.socket = in_namespace(link.client_ns, make_sender)
    receiver.settimeout(1.0)

    def send_and_count(n: int) -> int:
        for i in range(n):
            sender.sendto(i.to_bytes(4, "big"), (link.relay_ip, 9000))
            time.sleep(0.001)
        got = 0
        try:
            while True:
                receiver.recv(64)
                got += 1
        except TimeoutError:
            return got

    with sender, receiver:
        assert send_and_count(50) == 50
        link.shape("up", loss=0.5)
        assert 40 < send_and_count(200) < 160
        link.shape("up", loss=0, down=True)
        assert send_and_count(50) == 0
        link.shape("up", down=False)
        assert send_and_count(50) == 50
    stats = link.stats()["up"]
    assert stats["lost"] > 40 and stats["dropped_down"] == 50


def test_bottleneck_queue_drops_tail(link: NetnsLink) -> None:
    link.shape(rate=500_000, limit=20_000)
    bulk_rate(link, 200_000)  # TCP recovers: everything arrives
    stats = link.stats()["down"]
    assert stats["overflow"] > 0
    assert stats["max_queue"] <= 20_000


def test_namespaces_removed_even_on_failure() -> None:
    made: list[str] = []
    with pytest.raises(RuntimeError, match="inside"), NetnsLink() as link:
        made = [link.relay_ns, link.client_ns]
        assert all((NETNS_DIR / ns).exists() for ns in made)
        raise RuntimeError("inside")
    assert made and not any((NETNS_DIR / ns).exists() for ns in made)
    assert not any(Path("/sys/class/net", name).exists()
                   for name in (link.relay_dev, link.client_dev))


def test_tbf_backend_shapes_the_rate() -> None:
    with NetnsLink(backend="tbf") as link:
        link.shape(rate=1_000_000)
        rate = bulk_rate(link, 250_000)
    assert 0.6e6 < rate < 1.1e6, rate
