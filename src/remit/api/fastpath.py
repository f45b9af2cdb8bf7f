"""Decision requests answered without the ASGI round trip: uvicorn's HTTP protocol, one step shorter.

uvicorn turns every request into an ASGI cycle: a task, an `asyncio.Event`, message dicts, the
headers checked and re-encoded. On bench/http.py that machinery cost more of a decision
request's server time than the handler did (a bare ASGI app under uvicorn: ~53 µs a request;
the same answers from a plain asyncio protocol over the same parser: ~12 µs). `DecisionProtocol`
is uvicorn's own httptools protocol with one change: a POST to a decision route (`HotRoutes`),
when it is the only request in flight on its connection, is answered here — the same handler,
auth, error mapping, log line and metrics as the ASGI path, the response written straight to
the transport. Everything else goes the ASGI way unchanged: other routes and methods, a query
string or an escaped path, pipelined requests, `Expect: 100-continue`, upgrades, HTTP/1.0,
and servers with a concurrency limit.

It relies on `HttpToolsProtocol`'s per-connection state (`cycle`, `scope`, `headers`, `tasks`,
`on_response_complete`), so pyproject.toml pins uvicorn's minor version; the end-to-end suites
(schemathesis included) exercise both paths.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.responses import Response
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from remit.api.app import Handler, HotRoutes
from remit.limits import REQUEST_BODY_BYTES_MAX


class _NoEvent:
    """uvicorn's protocol sets the cycle's event on body and disconnect; nothing waits on it here."""

    @staticmethod
    def set() -> None:
        return None


class _Cycle:
    """What `HttpToolsProtocol` reads and writes of its current request, for one answered here."""

    __slots__ = ("body", "disconnected", "keep_alive", "message_event", "more_body", "response_complete")

    def __init__(self, keep_alive: bool) -> None:
        self.body = bytearray()
        self.disconnected = False
        self.keep_alive = keep_alive
        self.message_event = _NoEvent()
        self.more_body = True
        self.response_complete = False


class DecisionProtocol(HttpToolsProtocol):
    """`uvicorn.Config(http=DecisionProtocol)`: decision requests skip the ASGI cycle (module docstring)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._routes = self.app if isinstance(self.app, HotRoutes) and self.limit_concurrency is None else None
        self._handler: Handler | None = None

    def on_headers_complete(self) -> None:
        handler = self._hot_handler()
        if handler is None:
            super().on_headers_complete()
            return
        self._handler = handler
        self.cycle = _Cycle(keep_alive=self.parser.should_keep_alive())  # type: ignore[assignment]

    def _hot_handler(self) -> Handler | None:
        """The decision handler for this request if it can be answered here, else None."""
        routes = self._routes
        if routes is None or self.expect_100_continue:
            return None
        if self.cycle is not None and not self.cycle.response_complete:
            return None  # pipelined behind an unanswered request: uvicorn queues it
        parser = self.parser
        if parser.get_method() != b"POST" or parser.get_http_version() != "1.1" or parser.should_upgrade():
            return None
        url = self.url
        if b"?" in url or b"%" in url or not url.startswith(b"/v1/"):
            return None
        scope: dict[str, Any] = self.scope  # type: ignore[assignment]
        path = url.decode("ascii")
        scope.update(method="POST", path=path, raw_path=url, query_string=b"")
        return routes.handler_for(scope)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if isinstance(cycle, _Cycle):
            if len(cycle.body) <= REQUEST_BODY_BYTES_MAX:  # past it the handler refuses; keep no more
                cycle.body += body
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if not isinstance(cycle, _Cycle):
            super().on_message_complete()
            return
        cycle.more_body = False
        assert self._handler is not None  # set with the cycle
        task = self.loop.create_task(self._answer(cycle, self.scope, self._handler))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)  # graceful shutdown waits for it like for any request

    async def _answer(self, cycle: _Cycle, scope: dict[str, Any], handler: Handler) -> None:
        assert self._routes is not None  # only a hot request has a _Cycle
        try:
            response = await self._routes.respond(scope, bytes(cycle.body), handler)
        except BaseException:
            # The handler maps every error to a response; if something still escapes (or the
            # server cancels the task), the client must not wait on an answer that never comes.
            cycle.response_complete = True
            self.transport.close()
            raise
        if cycle.disconnected or self.transport.is_closing():
            cycle.response_complete = True
            return
        self.transport.write(_response_bytes(response, self.server_state.default_headers, cycle.keep_alive))
        cycle.response_complete = True
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()


def _response_bytes(response: Response, default_headers: list[tuple[bytes, bytes]], keep_alive: bool) -> bytes:
    """Status line, uvicorn's default headers (date, server), the response's own, its body."""
    parts = [STATUS_LINE[response.status_code]]
    for name, value in default_headers:
        parts += (name, b": ", value, b"\r\n")
    for name, value in response.raw_headers:
        parts += (name, b": ", value, b"\r\n")
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts += (b"\r\n", bytes(response.body))
    return b"".join(parts)
