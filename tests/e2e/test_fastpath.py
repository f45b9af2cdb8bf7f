"""The decision fast path (api/fastpath.py) against a real `remit serve`, over raw sockets.

A decision request alone on its connection is answered by `DecisionProtocol` itself; pipelined
ones, HTTP/1.0, a query string and `Expect: 100-continue` go through uvicorn's ASGI cycle. Both
must give the same answers, framing and headers, and keep-alive must behave as HTTP/1.1 says.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from remit.limits import REQUEST_BODY_BYTES_MAX

from .conftest import first_server
from .servers import RemitServer, tenant_state

AGENT = "bot-7"
BODY = json.dumps({"action": "crm.discount.apply", "amounts": {"usd": "1.00"}}).encode()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemitServer]:
    with first_server("sqlite", tmp_path_factory.mktemp("fastpath")) as started:
        yield started


def _connect(server: RemitServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=10)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def _request(
    server: RemitServer,
    path: str,
    body: bytes,
    *,
    version: str = "HTTP/1.1",
    extra: str = "",
    length: int | None = None,
) -> bytes:
    key = server.agent_keys[AGENT]
    head = (
        f"POST {path} {version}\r\nHost: test\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body) if length is None else length}\r\n{extra}\r\n"
    )
    return head.encode() + body


class Reader:
    """Reads whole HTTP/1.1 responses (Content-Length framed) off one connection."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.buffer = b""

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        if status == 100:
            return status, headers, b""
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            self._read()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    def is_closed_by_server(self) -> bool:
        return self.connection.recv(1) == b""

    def _read(self) -> None:
        chunk = self.connection.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk


def _json(body: bytes) -> Any:
    return json.loads(body)


def test_a_lone_decision_and_a_pipelined_one_answer_alike(served: RemitServer) -> None:
    with _connect(served) as connection:
        reader = Reader(connection)
        connection.sendall(_request(served, "/v1/authorize", BODY))
        alone = reader.response()
        # Three at once: the first is answered by the fast path, the next two wait in uvicorn's pipeline.
        connection.sendall(_request(served, "/v1/authorize", BODY) * 3)
        pipelined = [reader.response() for _ in range(3)]
    for status, headers, body in [alone, *pipelined]:
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert {"date", "server", "content-length"} <= set(headers)
        assert _json(body)["decision"] == "allow"
    reservations = {_json(body)["reservation"] for _, _, body in [alone, *pipelined]}
    assert len(reservations) == 4
    assert set(alone[1]) == set(pipelined[1][1])  # the same headers, whichever path answered


def test_commit_on_the_fast_path_and_keep_alive(served: RemitServer) -> None:
    with _connect(served) as connection:
        reader = Reader(connection)
        connection.sendall(_request(served, "/v1/authorize", BODY))
        reservation = _json(reader.response()[2])["reservation"]
        connection.sendall(_request(served, f"/v1/reservations/{reservation}/commit", b"{}"))
        status, _, body = reader.response()
        assert (status, _json(body)["status"]) == (200, "committed")
        connection.sendall(_request(served, f"/v1/reservations/{reservation}/commit", b"{}"))
        status, _, body = reader.response()  # the same connection still answers: committed already
        assert status == 409 and set(_json(body)["error"]) == {"code", "message", "details"}


def test_body_split_over_several_writes(served: RemitServer) -> None:
    request = _request(served, "/v1/authorize", BODY)
    with _connect(served) as connection:
        reader = Reader(connection)
        for start in range(0, len(request), 7):
            connection.sendall(request[start : start + 7])
        status, _, body = reader.response()
    assert status == 200 and _json(body)["decision"] == "allow"


def test_connection_close_is_honoured(served: RemitServer) -> None:
    with _connect(served) as connection:
        reader = Reader(connection)
        connection.sendall(_request(served, "/v1/authorize", BODY, extra="Connection: close\r\n"))
        status, headers, _ = reader.response()
        assert status == 200 and headers["connection"] == "close"
        assert reader.is_closed_by_server()


def test_http_1_0_is_answered_and_closed(served: RemitServer) -> None:
    with _connect(served) as connection:
        reader = Reader(connection)
        connection.sendall(_request(served, "/v1/authorize", BODY, version="HTTP/1.0"))
        status, _, body = reader.response()
        assert status == 200 and _json(body)["decision"] == "allow"
        assert reader.is_closed_by_server()


def test_expect_100_continue_goes_the_asgi_way(served: RemitServer) -> None:
    with _connect(served) as connection:
        reader = Reader(connection)
        head = _request(served, "/v1/authorize", b"", extra="Expect: 100-continue\r\n", length=len(BODY))
        connection.sendall(head)
        assert reader.response()[0] == 100
        connection.sendall(BODY)
        status, _, body = reader.response()
    assert status == 200 and _json(body)["decision"] == "allow"


def test_a_query_string_goes_the_asgi_way_with_the_same_answer(served: RemitServer) -> None:
    with _connect(served) as connection:
        reader = Reader(connection)
        connection.sendall(_request(served, "/v1/authorize?trace=1", BODY))
        status, _, body = reader.response()
    assert status == 200 and _json(body)["decision"] == "allow"


def _state(server: RemitServer) -> tuple[Any, ...]:
    with server.client(server.admin_key) as admin:
        return tenant_state(admin)


def test_an_oversized_body_is_refused_and_changes_nothing(served: RemitServer) -> None:
    before = _state(served)
    body = b'{"action": "crm.discount.apply", "pad": "' + b"x" * (REQUEST_BODY_BYTES_MAX + 10) + b'"}'
    with _connect(served) as connection:
        reader = Reader(connection)
        connection.sendall(_request(served, "/v1/authorize", body))
        status, _, answer = reader.response()
    assert status == 413 and _json(answer)["error"]["code"] == "body_too_large"
    assert _state(served) == before


def test_errors_on_the_fast_path_keep_their_shape(served: RemitServer) -> None:
    with _connect(served) as connection:
        reader = Reader(connection)
        connection.sendall(_request(served, "/v1/authorize", b"{not json"))
        status, _, body = reader.response()
        assert status == 400 and _json(body)["error"]["code"] == "invalid_json"
        connection.sendall(_request(served, "/v1/reservations/res_missing/commit", b"{}"))
        status, _, body = reader.response()
        assert status == 404 and _json(body)["error"]["code"] == "not_found"


def test_a_client_gone_mid_body_leaves_the_server_serving(served: RemitServer) -> None:
    before = _state(served)
    with _connect(served) as connection:
        connection.sendall(_request(served, "/v1/authorize", BODY)[:-5])  # the body never completes
    with _connect(served) as connection:
        reader = Reader(connection)
        connection.sendall(_request(served, "/v1/authorize", BODY))
        status, _, body = reader.response()
    assert status == 200 and _json(body)["decision"] == "allow"
    after = _state(served)
    assert len(after[1]) == len(before[1]) + 1  # one ledger entry: the second request's hold, no other


def test_an_error_escaping_the_handler_closes_the_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler maps every error to a response; should anything still escape, the client is
    not left waiting: the connection closes. (An in-process server: the fault is injected.)"""
    import threading

    import uvicorn

    from remit.api.app import HotRoutes
    from remit.bootstrap import open_store
    from remit.engine import Engine
    from remit.server import ServeOptions, _app, _uvicorn_config
    from remit.service import Service

    from .servers import free_port

    async def broken(*args: object) -> object:
        raise RuntimeError("injected")

    monkeypatch.setattr(HotRoutes, "respond", broken)
    store = open_store(f"sqlite:///{tmp_path / 'broken.db'}")
    options = ServeOptions(database_url="unused", port=free_port(), is_logging_requests=False)
    server = uvicorn.Server(_uvicorn_config(_app(Service(Engine(store)), options), options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started
        with socket.create_connection(("127.0.0.1", options.port), timeout=10) as connection:
            connection.sendall(b"POST /v1/authorize HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
            assert connection.recv(1) == b""  # closed, not hanging until the 10 s timeout
    finally:
        server.should_exit = True
        thread.join(30)
        store.close()
