"""Remit: the control plane that bounds what AI agents may do.

The names a user needs are exported here; everything else is reachable by module path.
"""

from remit.bootstrap import open_engine, open_store
from remit.client import AsyncClient, Client
from remit.domain.decisions import Decision, Outcome
from remit.engine import ActionInput, Engine
from remit.errors import ConfigError, Conflict, Denied, InvalidRequest, NotFound, RemitError
from remit.local import Local

__all__ = [
    "ActionInput",
    "AsyncClient",
    "Client",
    "ConfigError",
    "Conflict",
    "Decision",
    "Denied",
    "Engine",
    "InvalidRequest",
    "Local",
    "NotFound",
    "Outcome",
    "RemitError",
    "open_engine",
    "open_store",
]
