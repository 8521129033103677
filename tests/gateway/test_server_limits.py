"""One client cannot hold the HTTP server: deadlines for headers, bodies and idle keep-alive, and a
cap on connections, in every process `shared.runner` serves. Live uvicorn processes on loopback,
raw sockets, settings of about a second so the whole module takes seconds."""
from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, start_process, stop_process, wait_until_healthy

SHORT = {
    "HTTP_HEADER_TIMEOUT_SECONDS": "1",
    "HTTP_BODY_TIMEOUT_SECONDS": "1",
    "HTTP_KEEPALIVE_SECONDS": "1",
}
BASIC = "Authorization: Basic ZGV2LXdyaXRlLWtleTo=\r\n"  # dev-write-key


def serve(module: str, env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    log = tmp_path / f"{module}.log"
    process = start_process(module, {"PORT": str(port), "DATA_DIR": str(tmp_path / "data"), **env}, log)
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", process, log)
        yield "127.0.0.1", port
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    yield from serve("services.gateway", SHORT, tmp_path_factory.mktemp("gateway"))


@pytest.fixture(scope="module")
def capped_ingest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A service on its own, three connections at most (and deadlines long enough to hold them)."""
    yield from serve("services.ingest", {"HTTP_MAX_CONNECTIONS": "3"}, tmp_path_factory.mktemp("ingest"))


def connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    return sock


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started, received = time.monotonic(), b""
    while chunk := sock.recv(65536):
        received += chunk
    return received, time.monotonic() - started


def error_of(response: bytes) -> tuple[int, dict]:  # type: ignore[type-arg]
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]


class TestHeaderDeadline:
    def test_half_a_request_line_is_answered_408_and_closed(self, gateway):
        with connect(gateway) as sock:
            sock.sendall(b"GET /hea")
            response, waited = read_until_closed(sock)
        assert 0.8 < waited < 5
        status, error = error_of(response)
        assert status == 408 and error["code"] == "request_timeout"

    def test_headers_that_trickle_in_do_not_reset_the_deadline(self, gateway):
        with connect(gateway) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\n")
            started = time.monotonic()
            for n in range(10):
                try:
                    sock.sendall(f"X-Slow-{n}: 1\r\n".encode())
                except OSError:
                    break
                time.sleep(0.3)
            response, _ = read_until_closed(sock)
        assert time.monotonic() - started < 5
        assert error_of(response)[0] == 408

    def test_a_connection_that_sends_nothing_is_closed(self, gateway):
        with connect(gateway) as sock:
            response, waited = read_until_closed(sock)
        assert response == b"" and 0.8 < waited < 5


class TestBodyDeadline:
    def test_a_body_that_stalls_after_one_byte_is_answered_408_and_closed(self, gateway):
        with connect(gateway) as sock:
            sock.sendall(("POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          f"{BASIC}Content-Length: 100\r\n\r\n{{").encode())
            response, waited = read_until_closed(sock)
        assert 0.8 < waited < 5
        status, error = error_of(response)
        assert status == 408 and error["code"] == "request_timeout"
        assert b"connection: close" in response.lower()

    def test_many_stalled_bodies_are_all_let_go(self, gateway):
        socks = [connect(gateway) for _ in range(50)]
        try:
            for sock in socks:
                sock.sendall(f"POST /v1/batch HTTP/1.1\r\nHost: x\r\n{BASIC}Content-Length: 1000\r\n\r\n[".encode())
            started = time.monotonic()
            for sock in socks:
                read_until_closed(sock)
            assert time.monotonic() - started < 8
        finally:
            for sock in socks:
                sock.close()


class TestKeepAlive:
    def test_an_idle_kept_alive_connection_is_closed(self, gateway):
        with connect(gateway) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            response, waited = read_until_closed(sock)
        assert response.startswith(b"HTTP/1.1 200") and 0.8 < waited < 5

    def test_a_normal_client_is_unaffected(self, gateway):
        host, port = gateway
        with httpx.Client(base_url=f"http://{host}:{port}", auth=("dev-write-key", "")) as client:
            for n in range(5):  # one kept-alive connection, requests well within the deadlines
                sent = client.post("/v1/track", json={"userId": f"u{n}", "event": "Order Completed"})
                assert sent.status_code == 200, sent.text
            time.sleep(1.5)  # past the keep-alive: the client opens a new connection by itself
            assert client.get("/health").status_code == 200

    def test_a_body_sent_in_pieces_within_the_deadline_is_accepted(self, gateway):
        body = json.dumps({"userId": "u-pieces", "event": "Signed Up"}).encode()
        with connect(gateway) as sock:
            sock.sendall((f"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{BASIC}"
                          f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode())
            for piece in (body[:5], body[5:20], body[20:]):
                time.sleep(0.2)
                sock.sendall(piece)
            response, _ = read_until_closed(sock)
        assert response.startswith(b"HTTP/1.1 200"), response


class TestConnectionCap:
    def test_connections_over_the_cap_are_answered_503_and_others_go_on(self, capped_ingest):
        held = [connect(capped_ingest) for _ in range(3)]
        try:
            time.sleep(0.2)  # the server has accepted them
            with connect(capped_ingest) as extra:
                extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                response, _ = read_until_closed(extra)
            status, error = error_of(response)
            assert status == 503 and error["code"] == "too_many_connections"
            assert b"retry-after: 1" in response.lower()
            held.pop().close()
            time.sleep(0.2)
            host, port = capped_ingest
            assert httpx.get(f"http://{host}:{port}/health").status_code == 200
        finally:
            for sock in held:
                sock.close()
