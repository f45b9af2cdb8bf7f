"""`remit serve`: open the store, bootstrap the default tenant once, run the HTTP API under uvicorn.

Shutdown (SIGINT/SIGTERM) stops accepting connections, lets in-flight requests finish (their
batches commit), drains the batcher, then closes the store: nothing is left half-written.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn

from remit.api.app import create_app
from remit.api.requestlog import RequestLogWriter
from remit.bootstrap import open_store, tune_gc_for_service
from remit.engine import Engine
from remit.errors import InvalidRequest
from remit.limits import REQUESTS_PER_KEY_PER_SECOND_DEFAULT, SHUTDOWN_GRACE_SECONDS_MAX
from remit.service import Bootstrap, Service

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_TENANT = "default"


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


def check_port_free(host: str, port: int) -> None:
    """Fail with a clear message before anything is created if the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise InvalidRequest(
                f"cannot listen on {host}:{port}: {error.strerror or error} (use --port)", code="address_in_use"
            ) from None


def serve(options: ServeOptions, *, announce: Callable[[str], None] = print) -> None:
    """Run until interrupted. `announce` receives the lines a user needs (keys once, the address)."""
    check_port_free(options.host, options.port)
    store = open_store(options.database_url)
    try:
        engine = Engine(store)
        service = Service(engine)
        if options.config is not None:
            created = service.bootstrap_tenant(options.tenant, options.config, source=options.config_source)
            announce_keys(created, options.tenant, announce)
        app = create_app(
            service,
            request_log=RequestLogWriter() if options.is_logging_requests else None,
            requests_per_key_per_second=options.requests_per_key_per_second,
        )
        config = uvicorn.Config(
            app,
            host=options.host,
            port=options.port,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS_MAX,
            backlog=4096,
            proxy_headers=False,  # the log shows the peer address; trusting X-Forwarded-For is a deployment choice
        )
        server = uvicorn.Server(config)
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
