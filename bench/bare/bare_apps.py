"""Canned decision answers for bench/servers.py: an HTTP server's own cost, with no Remit in it.

Each app answers `POST /v1/authorize` with an allow naming a reservation and any other POST
with a commit, the shapes `bench/loadgen.c` checks. Every answer awaits once before it is
written, as a real decision waits for its batch.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

ALLOW = (
    b'{"decision":"allow","reservation":"res_0123456789abcdef0123456789abcdef",'
    b'"lease_expires_at":"2026-12-08T00:00:00.000000Z","budgets":[],"reasons":[],"retry_after_seconds":null}'
)
COMMITTED = b'{"reservation":"res_0123456789abcdef0123456789abcdef","status":"committed"}'
JSON_HEADERS = [("content-type", "application/json")]


def _answer_for(path: str) -> bytes:
    return ALLOW if path == "/v1/authorize" else COMMITTED


async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI app (uvicorn or granian `--interface asgi`)."""
    if scope["type"] != "http":
        return
    message = await receive()
    while message.get("more_body"):
        message = await receive()
    await asyncio.sleep(0)
    body = _answer_for(scope["path"])
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def rsgi(scope: Any, protocol: Any) -> None:
    """A bare RSGI app (granian `--interface rsgi`)."""
    await protocol()
    await asyncio.sleep(0)
    protocol.response_bytes(200, JSON_HEADERS, _answer_for(scope.path))


class FastPathProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol answering as `remit.api.fastpath` does: a task per request,
    the response bytes written straight to the transport (no ASGI cycle). Keep-alive only."""

    def on_headers_complete(self) -> None:
        self.cycle = None  # type: ignore[assignment]
        self._path = self.url.decode("ascii")

    def on_body(self, body: bytes) -> None:
        return None

    def on_message_complete(self) -> None:
        task = self.loop.create_task(self._answer(self._path))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _answer(self, path: str) -> None:
        await asyncio.sleep(0)
        body = _answer_for(path)
        head = b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
        self.transport.write(b"".join((STATUS_LINE[200], head, body)))
