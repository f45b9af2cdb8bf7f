"""`remit serve`: open the store, bootstrap the default tenant once, run the HTTP API under uvicorn.

Shutdown (SIGINT/SIGTERM) stops accepting connections, lets in-flight requests finish (their
batches commit), drains the batcher, then closes the store: nothing is left half-written.

With `workers` > 1 the process bootstraps, binds the port and becomes uvicorn's supervisor of
that many spawned worker processes sharing the listening socket. One CPython process uses one
core, whatever the machine has; workers are how one node uses the rest. On PostgreSQL the
supervisor also hosts the node's engine (`remit.relay`): a worker does all of a request but
the decision — HTTP, keys, validation, reads, config changes, the answer — and the host decides
every worker's requests in shared batches. On SQLite each worker decides its own. A worker
that dies is replaced; the engine host stops after the last worker has.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.supervisors import Multiprocess

from remit.api.app import create_app
from remit.api.fastpath import DecisionProtocol
from remit.api.requestlog import RequestLogWriter
from remit.bootstrap import open_store, tune_gc_for_service
from remit.engine import Engine
from remit.errors import InvalidRequest
from remit.limits import REQUESTS_PER_KEY_PER_SECOND_DEFAULT, SHUTDOWN_GRACE_SECONDS_MAX
from remit.relay import EngineHost
from remit.service import Bootstrap, Service

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_TENANT = "default"
WORKER_OPTIONS_ENV = "REMIT_WORKER_OPTIONS"
"""How the supervisor hands a spawned worker its options (uvicorn imports the app by name there)."""
ORPHAN_CHECK_SECONDS = 1.0
"""How often a worker checks that its supervisor is still its parent."""


@dataclass(frozen=True, slots=True)
class ServeOptions:
    database_url: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    tenant: str = DEFAULT_TENANT
    config: Mapping[str, Any] | None = None
    """The config a new tenant starts with (None: bootstrap nothing)."""
    config_source: str = "<config>"
    is_logging_requests: bool = True
    requests_per_key_per_second: int = REQUESTS_PER_KEY_PER_SECOND_DEFAULT
    workers: int = 1
    """Server processes sharing the port (1: this process serves)."""


def check_port_free(host: str, port: int) -> None:
    """Fail with a clear message before anything is created if the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            is_taken = error.errno == errno.EADDRINUSE
            raise InvalidRequest(
                f"cannot listen on {host}:{port}: {error.strerror or error}" + (" (use --port)" if is_taken else ""),
                code="address_in_use" if is_taken else "invalid_address",
            ) from None


def serve(options: ServeOptions, *, announce: Callable[[str], None] = print) -> None:
    """Run until interrupted. `announce` receives the lines a user needs (keys once, the address)."""
    check_port_free(options.host, options.port)
    if options.workers > 1:
        _serve_workers(options, announce)
        return
    store = open_store(options.database_url)
    try:
        service = Service(Engine(store))
        _bootstrap(service, options, announce)
        app = _app(service, options)
        server = uvicorn.Server(_uvicorn_config(app, options))
        announce(f"remit serving http://{options.host}:{options.port} (tenant {options.tenant}; Ctrl-C stops)")
        tune_gc_for_service()
        # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the
        # handler that was installed before it. Installing a no-op one here lets the process
        # close the store and exit 0 after a graceful stop instead of dying by the signal.
        previous = {sig: signal.signal(sig, _after_graceful_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            server.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        store.close()


def _bootstrap(service: Service, options: ServeOptions, announce: Callable[[str], None]) -> None:
    if options.config is not None:
        created = service.bootstrap_tenant(options.tenant, options.config, source=options.config_source)
        announce_keys(created, options.tenant, announce)


def _app(
    service: Service,
    options: ServeOptions,
    on_shutdown: Callable[[], None] | None = None,
    engine_socket: str | None = None,
) -> ASGIApp:
    return create_app(
        service,
        request_log=RequestLogWriter() if options.is_logging_requests else None,
        requests_per_key_per_second=options.requests_per_key_per_second,
        on_shutdown=on_shutdown,
        engine_socket=engine_socket,
    )


def _uvicorn_config(app: ASGIApp | str, options: ServeOptions) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        factory=isinstance(app, str),
        workers=options.workers,
        host=options.host,
        port=options.port,
        loop="uvloop",
        http=DecisionProtocol,
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS_MAX,
        backlog=4096,
        proxy_headers=False,  # the log shows the peer address; trusting X-Forwarded-For is a deployment choice
    )


def _serve_workers(options: ServeOptions, announce: Callable[[str], None]) -> None:
    """Bootstrap here, then supervise `options.workers` spawned worker processes on one socket.

    On a database server (PostgreSQL) this process also hosts the node's engine, which decides
    every worker's requests (`remit.relay`): one writer per node keeps each tenant's state in
    memory and claims it as it writes. On SQLite each worker decides its own, on the event
    loop, the writers queueing on the file's lock: there the relay's extra hop cost more than
    it saved (bench/http.py, 2 workers: ~6,100 decisions/s relayed against ~7,500).
    """
    store = open_store(options.database_url)
    try:
        _bootstrap(Service(Engine(store)), options, announce)
        is_relayed = not store.is_in_process
    finally:
        store.close()  # the supervisor keeps no connection of its own: its engine host opens its store
    worker_options: dict[str, Any] = {
        "database_url": options.database_url,
        "is_logging_requests": options.is_logging_requests,
        "requests_per_key_per_second": options.requests_per_key_per_second,
        "engine_socket": None,
    }
    with contextlib.ExitStack() as stack:
        if is_relayed:
            # Frames are pickles: the socket's directory is the server user's alone (mkdtemp: 0700).
            socket_directory = tempfile.mkdtemp(prefix="remit-engine-")
            stack.callback(shutil.rmtree, socket_directory, ignore_errors=True)
            host = EngineHost(options.database_url, os.path.join(socket_directory, "engine.sock"))
            host.start()
            stack.callback(host.stop)  # after the workers: Multiprocess.run returns once they have all stopped
            worker_options["engine_socket"] = host.path
            # The host's batch thread and event loop share this process's GIL: hand it over as
            # soon as a server does (at the default 5 ms, a batch back from PostgreSQL waited
            # for the loop's turn to end while it held the tenant's lock).
            tune_gc_for_service()
        os.environ[WORKER_OPTIONS_ENV] = json.dumps(worker_options)
        config = _uvicorn_config(f"{__name__}:worker_app", options)
        listener = config.bind_socket()
        stack.callback(listener.close)
        announce(
            f"remit serving http://{options.host}:{options.port} with {options.workers} worker processes "
            f"(tenant {options.tenant}; Ctrl-C stops)"
        )
        Multiprocess(config, sockets=[listener]).run()


def worker_app() -> ASGIApp:
    """The app of one spawned worker (uvicorn calls this factory by name in the worker process)."""
    settings = json.loads(os.environ[WORKER_OPTIONS_ENV])
    engine_socket = settings.pop("engine_socket")
    options = ServeOptions(**settings)
    store = open_store(options.database_url)
    app = _app(Service(Engine(store)), options, on_shutdown=store.close, engine_socket=engine_socket)
    tune_gc_for_service()
    threading.Thread(target=_stop_when_orphaned, args=(os.getppid(),), name="remit-orphan-watch", daemon=True).start()
    return app


def _stop_when_orphaned(supervisor_pid: int) -> None:
    """A supervisor killed outright (SIGKILL, OOM) cannot stop its workers, which would keep the
    port: a worker whose parent changed stops itself, gracefully, within ORPHAN_CHECK_SECONDS."""
    while os.getppid() == supervisor_pid:
        time.sleep(ORPHAN_CHECK_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)


def _after_graceful_stop(sig: int, frame: FrameType | None) -> None:
    """The signal was already handled (uvicorn drained the server); nothing more to do."""


def announce_keys(created: Bootstrap, tenant: str, announce: Callable[[str], None]) -> None:
    if not created.is_created:
        announce(f"tenant {tenant} already has keys; none printed (create more with `remit keys create`)")
        return
    announce(f"created tenant {tenant}; these keys are shown once, keep them:")
    announce(f"admin key: {created.admin_key}")
    for agent, key in created.agent_keys.items():
        announce(f"agent key {agent}: {key}")
