"""The HTTP application: routes parse, call the engine or the service, and map errors — nothing else.

Decisions go through one `AsyncBatcher` per process (requests arriving together share a store
transaction); everything else runs in a worker thread so the event loop never waits on the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from remit.api.errors import error_response, remit_error_response
from remit.api.metrics import Metrics
from remit.api.ratelimit import RateLimiter
from remit.api.requestlog import RequestLogWriter
from remit.batching import AsyncBatcher
from remit.errors import InvalidRequest, RemitError, Unauthorized
from remit.keys import Principal
from remit.limits import (
    EXPIRY_SWEEP_SECONDS_DEFAULT,
    REQUEST_BODY_BYTES_MAX,
    REQUEST_BURST_PER_KEY_DEFAULT,
    REQUESTS_PER_KEY_PER_SECOND_DEFAULT,
)
from remit.relay import RelayBatcher
from remit.service import Service
from remit.upkeep import start_upkeep
from remit.wire import (
    action_input,
    check_json,
    commit_json,
    config_from_yaml,
    decision_json,
    expect_object,
    extend_json,
    key_request,
    ledger_request,
    release_json,
    resolve_request,
    usage_json,
    whoami_json,
)

log = logging.getLogger("remit.requests")

Handler = Callable[[Request], Awaitable[Response]]

_PID = os.getpid()
"""The log line's `pid`: which worker process answered (`remit serve --workers`). Spawned workers import afresh."""

CLIENT_CLOSED_REQUEST = 499
"""Logged (never sent) when a client disconnects before its request was read: nginx's convention."""


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def _body(request: Request, *, allow_yaml: bool = False, is_empty_allowed: bool = True) -> Any:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > REQUEST_BODY_BYTES_MAX:
        raise InvalidRequest(f"the request body is over {REQUEST_BODY_BYTES_MAX} bytes", code="body_too_large")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > REQUEST_BODY_BYTES_MAX:
            raise InvalidRequest(f"the request body is over {REQUEST_BODY_BYTES_MAX} bytes", code="body_too_large")
    if not raw.strip() and not is_empty_allowed:
        # An empty config would remove every meter, scope, agent and budget: that must be said on purpose.
        raise InvalidRequest("the body is empty; send the config (or {} to remove everything)", code="invalid_request")
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if allow_yaml and content_type in ("application/yaml", "application/x-yaml", "text/yaml"):
        return config_from_yaml(raw)
    if not raw:
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(f"the body is not valid JSON: {error}", code="invalid_json") from None


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise InvalidRequest(f"{name} must be true or false", code="invalid_field", field=name)
    return value in ("true", "1")


def _query(request: Request, allowed: frozenset[str]) -> Mapping[str, str]:
    params = request.query_params
    for name in params:
        if name not in allowed:
            raise InvalidRequest(f"unknown query parameter {name!r}", code="invalid_field", field=name)
    return params


class Api:
    """The routes, bound to one process's service and batcher."""

    def __init__(
        self, service: Service, batcher: AsyncBatcher, metrics: Metrics, rate_limiter: RateLimiter | None = None
    ) -> None:
        self.service = service
        self.batcher = batcher
        self.metrics = metrics
        self.rate_limiter = rate_limiter

    async def principal(self, request: Request) -> Principal:
        header = request.headers.get("authorization")
        principal = self.service.cached_principal(header)
        if principal is None:
            principal = await self._authenticate(request, header)
        if self.rate_limiter is not None:
            self.rate_limiter.take(principal.key_id)  # only once checked: key ids are not secret
        request.state.tenant = principal.tenant_id
        return principal

    async def _authenticate(self, request: Request, header: str | None) -> Principal:
        """A key this process has not checked lately, read from the store. Failed checks are
        counted per client address; past that address's limit its unchecked keys get 429, unread."""
        limiter = self.rate_limiter
        client = f"client {_client_host(request.scope)}"
        if limiter is not None:
            limiter.check(client, what="with invalid keys from this address")
        try:
            return await run_in_threadpool(self.service.authenticate, header)
        except Unauthorized:
            if limiter is not None:
                limiter.charge(client)
            raise

    # -- decisions ------------------------------------------------------------------------------
    async def authorize(self, request: Request) -> Response:
        principal = await self.principal(request)
        body = await _body(request)
        decision = await self.batcher.authorize(principal.tenant_id, action_input(body, agent=principal.agent))
        self.metrics.decisions.labels(decision.outcome.value).inc()
        return _json(decision_json(decision))

    async def usage(self, request: Request) -> Response:
        principal = await self.principal(request)
        body = await _body(request)
        result = await self.batcher.report_usage(principal.tenant_id, action_input(body, agent=principal.agent))
        return _json(usage_json(self.service.engine.tenant_config(principal.tenant_id), result))

    async def commit(self, request: Request) -> Response:
        principal = await self.principal(request)
        fields = resolve_request("commit", await _body(request))
        result = await self.batcher.commit(
            principal.tenant_id,
            request.path_params["reservation"],
            fields.amounts,
            outcome=fields.outcome,
            idempotency_key=fields.idempotency_key,
            agent=principal.agent,
        )
        return _json(commit_json(self.service.engine.tenant_config(principal.tenant_id), result))

    async def release(self, request: Request) -> Response:
        principal = await self.principal(request)
        fields = resolve_request("release", await _body(request))
        result = await self.batcher.release(
            principal.tenant_id,
            request.path_params["reservation"],
            idempotency_key=fields.idempotency_key,
            agent=principal.agent,
        )
        return _json(release_json(self.service.engine.tenant_config(principal.tenant_id), result))

    async def extend(self, request: Request) -> Response:
        principal = await self.principal(request)
        fields = resolve_request("extend", await _body(request))
        result = await self.batcher.extend(
            principal.tenant_id, request.path_params["reservation"], fields.lease_seconds, agent=principal.agent
        )
        return _json(extend_json(result))

    # -- reads ----------------------------------------------------------------------------------
    async def headroom(self, request: Request) -> Response:
        principal = await self.principal(request)
        params = _query(request, frozenset({"scope"}))
        return _json(await run_in_threadpool(self.service.headroom, principal, params.get("scope")))

    async def ledger(self, request: Request) -> Response:
        principal = await self.principal(request)
        asked = ledger_request(request.query_params)
        return _json(await run_in_threadpool(self.service.ledger_page, principal, asked))

    async def whoami(self, request: Request) -> Response:
        return _json(whoami_json(await self.principal(request)))

    async def check(self, request: Request) -> Response:
        principal = await self.principal(request)
        principal.require_admin()
        return _json(check_json(await run_in_threadpool(self.service.engine.check, principal.tenant_id)))

    # -- config and its parts -------------------------------------------------------------------
    async def get_config(self, request: Request) -> Response:
        principal = await self.principal(request)
        return _json(await run_in_threadpool(self.service.get_config, principal))

    async def put_config(self, request: Request) -> Response:
        principal = await self.principal(request)
        params = _query(request, frozenset({"dry_run"}))
        is_dry_run = _flag(request, "dry_run") if "dry_run" in params else False
        raw = await _body(request, allow_yaml=True, is_empty_allowed=False)
        document = expect_object(raw, "the config")
        result = await run_in_threadpool(
            lambda: self.service.put_config(principal, document, is_dry_run=is_dry_run, source="config")
        )
        return _json(result)

    async def scopes(self, request: Request) -> Response:
        principal = await self.principal(request)
        return _json({"scopes": await run_in_threadpool(self.service.list_scopes, principal)})

    async def scope(self, request: Request) -> Response:
        principal = await self.principal(request)
        path = request.path_params["path"]
        if request.method == "GET":
            return _json(await run_in_threadpool(self.service.get_scope, principal, path))
        if request.method == "DELETE":
            return _json(await run_in_threadpool(self.service.delete_scope, principal, path))
        body = expect_object(await _body(request))
        return _json(await run_in_threadpool(self.service.put_scope, principal, path, body))

    async def agents(self, request: Request) -> Response:
        principal = await self.principal(request)
        return _json({"agents": await run_in_threadpool(self.service.list_agents, principal)})

    async def agent(self, request: Request) -> Response:
        principal = await self.principal(request)
        name = request.path_params["name"]
        if request.method == "GET":
            return _json(await run_in_threadpool(self.service.get_agent, principal, name))
        if request.method == "DELETE":
            return _json(await run_in_threadpool(self.service.delete_agent, principal, name))
        body = expect_object(await _body(request))
        return _json(await run_in_threadpool(self.service.put_agent, principal, name, body))

    async def budgets(self, request: Request) -> Response:
        principal = await self.principal(request)
        scope = _query(request, frozenset({"scope"})).get("scope")
        return _json({"budgets": await run_in_threadpool(self.service.list_budgets, principal, scope)})

    async def budget(self, request: Request) -> Response:
        principal = await self.principal(request)
        budget_id = request.path_params["budget"]
        if request.method == "GET":
            return _json(await run_in_threadpool(self.service.get_budget, principal, budget_id))
        if request.method == "DELETE":
            return _json(await run_in_threadpool(self.service.delete_budget, principal, budget_id))
        body = expect_object(await _body(request))
        return _json(await run_in_threadpool(self.service.put_budget, principal, budget_id, body))

    # -- keys -----------------------------------------------------------------------------------
    async def keys(self, request: Request) -> Response:
        principal = await self.principal(request)
        if request.method == "GET":
            return _json({"keys": await run_in_threadpool(self.service.list_keys, principal)})
        role, agent, name = key_request(await _body(request))
        created = await run_in_threadpool(lambda: self.service.create_key(principal, role=role, agent=agent, name=name))
        return _json(created, status=201)

    async def key(self, request: Request) -> Response:
        principal = await self.principal(request)
        return _json(await run_in_threadpool(self.service.revoke_key, principal, request.path_params["key"]))

    async def rotate_key(self, request: Request) -> Response:
        principal = await self.principal(request)
        return _json(await run_in_threadpool(self.service.rotate_key, principal, request.path_params["key"]))

    # -- operations -----------------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        try:
            await run_in_threadpool(self.service.engine.store_is_ready)
        except Exception as error:
            return error_response("unavailable", f"the store is not reachable: {type(error).__name__}")
        return _json({"status": "ready"})

    async def metrics_endpoint(self, request: Request) -> Response:
        body = await run_in_threadpool(self.metrics.render, self.service.engine, self.batcher)
        return Response(body, media_type=self.metrics.content_type)

    async def openapi(self, request: Request) -> Response:
        return Response(OPENAPI_DOCUMENT, media_type="application/json")


OPENAPI_DOCUMENT = resources.files("remit.api").joinpath("openapi.json").read_bytes()


def _guarded(handler: Handler) -> Handler:
    """Every RemitError becomes its documented status and body; anything else a 500 in the same shape."""

    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except RemitError as error:
            return remit_error_response(error)
        except ClientDisconnect:
            # The caller went away mid-body: nothing was decided; there is no one to answer.
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        except Exception as error:
            if _is_store_failure(error):
                log.warning("store failure on %s %s: %s", request.method, request.url.path, error)
                return error_response("unavailable", f"the store is unavailable ({type(error).__name__}); retry")
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            return error_response("internal", f"internal error ({type(error).__name__}); the request changed nothing")

    guarded.__name__ = handler.__name__
    return guarded


def _is_store_failure(error: Exception) -> bool:
    """A database that is down or busy (connection and operational errors, pool timeouts).

    Data errors are not here: bad input reaching the store is a bug to see, not a 503 to retry.
    """
    name = type(error).__name__
    module = type(error).__module__
    return name in {"OperationalError", "InterfaceError", "PoolTimeout"} and module.startswith(("psycopg", "sqlite3"))


def routes(api: Api) -> list[Route]:
    def route(path: str, handler: Handler, methods: list[str]) -> Route:
        return Route(path, _guarded(handler), methods=methods, name=handler.__name__)

    return [
        route("/healthz", api.healthz, ["GET"]),
        route("/readyz", api.readyz, ["GET"]),
        route("/metrics", api.metrics_endpoint, ["GET"]),
        route("/openapi.json", api.openapi, ["GET"]),
        route("/v1/authorize", api.authorize, ["POST"]),
        route("/v1/usage", api.usage, ["POST"]),
        route("/v1/reservations/{reservation}/commit", api.commit, ["POST"]),
        route("/v1/reservations/{reservation}/release", api.release, ["POST"]),
        route("/v1/reservations/{reservation}/extend", api.extend, ["POST"]),
        route("/v1/headroom", api.headroom, ["GET"]),
        route("/v1/ledger", api.ledger, ["GET"]),
        route("/v1/whoami", api.whoami, ["GET"]),
        route("/v1/check", api.check, ["GET"]),
        route("/v1/config", api.get_config, ["GET"]),
        route("/v1/config", api.put_config, ["PUT"]),
        route("/v1/scopes", api.scopes, ["GET"]),
        route("/v1/scopes/{path:path}", api.scope, ["GET", "PUT", "DELETE"]),
        route("/v1/agents", api.agents, ["GET"]),
        route("/v1/agents/{name}", api.agent, ["GET", "PUT", "DELETE"]),
        route("/v1/budgets", api.budgets, ["GET"]),
        route("/v1/budgets/{budget:path}", api.budget, ["GET", "PUT", "DELETE"]),
        route("/v1/keys", api.keys, ["GET", "POST"]),
        route("/v1/keys/{key}", api.key, ["DELETE"]),
        route("/v1/keys/{key}/rotate", api.rotate_key, ["POST"]),
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_request")
    detail = getattr(exc, "detail", None) or "error"
    headers = getattr(exc, "headers", None)  # 405 carries Allow
    return error_response(code, f"{request.method} {request.url.path}: {detail}", status=status, headers=headers)


def _client_host(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


class RequestLog:
    """One structured log line per request (method, path, status, duration, tenant) and its metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics, writer: RequestLogWriter | None) -> None:
        self.app = app
        self.metrics = metrics
        self.writer = writer

    def record(self, scope: Scope, endpoint: str, status: int, seconds: float) -> None:
        self.metrics.observe_request(endpoint, status, seconds)
        if self.writer is not None:
            state = scope.get("state") or {}
            self.writer.write(
                {
                    "at": self.writer.timestamp(time.time_ns() // 1000),
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(seconds * 1000, 3),
                    "tenant": state.get("tenant"),
                    "client": _client_host(scope),
                    "pid": _PID,
                }
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            endpoint = getattr(scope.get("endpoint"), "__name__", "unmatched")
            self.record(scope, endpoint, status, time.perf_counter() - started)


class HotRoutes:
    """Decision requests bypass Starlette's router and middleware stack; everything else goes through it.

    Same handlers, same error mapping, same log line and metrics — only the dispatch is plain:
    on the bench (bench/http.py) Starlette's routing and middleware layers cost ~15 % of a
    decision request's server time.
    """

    def __init__(self, api: Api, fallback: ASGIApp, request_log: RequestLog) -> None:
        self.fallback = fallback
        self.request_log = request_log
        self.authorize = _guarded(api.authorize)
        self.usage = _guarded(api.usage)
        self.reservation = {
            "commit": _guarded(api.commit),
            "release": _guarded(api.release),
            "extend": _guarded(api.extend),
        }

    def handler_for(self, scope: Scope) -> Handler | None:
        """The decision handler of a POST (setting its path parameters), or None for any other route."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path: str = scope["path"]
        if path == "/v1/authorize":
            return self.authorize
        if path == "/v1/usage":
            return self.usage
        if path.startswith("/v1/reservations/"):
            parts = path.split("/")
            if len(parts) == 5 and parts[3]:
                handler = self.reservation.get(parts[4])
                if handler is not None:
                    scope["path_params"] = {"reservation": parts[3]}
                    return handler
        return None

    async def respond(self, scope: Scope, body: bytes, handler: Handler) -> Response:
        """Answer a decision request whose body has been read (api/fastpath.py); logs it like any."""

        async def receive() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        return await self._answer(scope, receive, handler)

    async def _answer(self, scope: Scope, receive: Receive, handler: Handler) -> Response:
        """The handler's response, logged and counted (both ways in: ASGI and the fast path)."""
        started = time.perf_counter()
        scope.setdefault("state", {})
        response = await handler(Request(scope, receive))
        self.request_log.record(scope, handler.__name__, response.status_code, time.perf_counter() - started)
        return response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.handler_for(scope)
        if handler is None:
            await self.fallback(scope, receive, send)
            return
        response = await self._answer(scope, receive, handler)
        await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


def create_app(
    service: Service,
    *,
    expiry_sweep_seconds: float = EXPIRY_SWEEP_SECONDS_DEFAULT,
    request_log: RequestLogWriter | None = None,
    requests_per_key_per_second: int = REQUESTS_PER_KEY_PER_SECOND_DEFAULT,
    on_shutdown: Callable[[], None] | None = None,
    engine_socket: str | None = None,
) -> ASGIApp:
    """The ASGI app. Its lifespan starts the batcher and the expiry sweep and drains both on shutdown.

    `request_log` receives one JSON line per request (None: no request log).
    `requests_per_key_per_second` is the API's own rate limit (0: none); past it, 429.
    `on_shutdown` runs last, after every batch has committed (a worker process closes its store there).
    `engine_socket`: decisions go to the node's engine host there (`remit.relay`), which also
    runs the sweep; None: this process decides them and sweeps.
    """
    metrics = Metrics()
    service.engine.batch_observer = metrics.batch_sizes.observe

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher = AsyncBatcher(service.engine) if engine_socket is None else RelayBatcher(service.engine, engine_socket)
        api.batcher = batcher
        stop_sweeping = asyncio.Event()
        sweepers = start_upkeep(service.engine, expiry_sweep_seconds, stop_sweeping) if engine_socket is None else []
        try:
            yield
        finally:
            stop_sweeping.set()
            await asyncio.gather(*sweepers)
            await batcher.drain()  # every decided request's batch is committed before the store closes
            batcher.close()
            if request_log is not None:
                request_log.flush()
            if on_shutdown is not None:
                on_shutdown()

    limiter = None
    if requests_per_key_per_second > 0:
        burst = requests_per_key_per_second * REQUEST_BURST_PER_KEY_DEFAULT / REQUESTS_PER_KEY_PER_SECOND_DEFAULT
        limiter = RateLimiter(requests_per_key_per_second, burst)
    api = Api(service, None, metrics, limiter)  # type: ignore[arg-type]  # the lifespan provides the batcher
    starlette = Starlette(routes=routes(api), lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    starlette.router.redirect_slashes = False  # `/v1/whoami/` is a 404 in the error shape, not an empty 307
    logged = RequestLog(starlette, metrics, request_log)
    return HotRoutes(api, logged, logged)
