"""`remit.Local`: the SDK's calls answered in-process over the embedded store (or any store URL).

Same methods, same answers and errors as `remit.Client`, by the same code the HTTP routes run
(`remit.wire` shapes, `remit.service.Service`, the engine), minus HTTP.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from remit.bootstrap import open_engine
from remit.client import Call, _Answer, _SyncApi
from remit.keys import Principal, Role
from remit.service import Service
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

__all__ = ["Local"]


class Local(_SyncApi):
    """Remit in-process over the embedded store, for single-process programs and tests.

    `database` is a SQLite file path or a database URL (`sqlite:///…`, `postgresql://…`); the
    tenant is created if missing (unless `create_tenant=False`: then a missing one is NotFound).
    Local acts as an admin of `tenant`, so each action names its agent or `agent=` here names a
    default. It answers with the same wire functions as the HTTP
    API, so every method returns what `Client`'s does and raises the same errors.
    """

    def __init__(
        self,
        database: str | os.PathLike[str],
        *,
        tenant: str = "default",
        agent: str | None = None,
        create_tenant: bool = True,
    ) -> None:
        self.engine = open_engine(os.fspath(database))
        try:
            if create_tenant:
                self.engine.create_tenant(tenant)
            else:
                self.engine.tenant_config(tenant)  # NotFound for a tenant that does not exist
        except BaseException:
            self.engine.store.close()
            raise
        self.service = Service(self.engine)
        self.tenant = tenant
        self.agent = agent
        self.principal = Principal(tenant, "local", Role.ADMIN)
        service, principal = self.service, self.principal
        self._handlers: dict[str, Callable[[Call], Any]] = {
            "authorize": self._authorize,
            "usage": self._usage,
            "commit": self._commit,
            "release": self._release,
            "extend": self._extend,
            "headroom": lambda call: service.headroom(principal, call.params.get("scope")),
            "ledger": self._ledger,
            "check": self._check,
            "whoami": lambda call: whoami_json(principal),
            "get_config": lambda call: service.get_config(principal),
            "put_config": self._put_config,
            "scopes": lambda call: {"scopes": service.list_scopes(principal)},
            "get_scope": lambda call: service.get_scope(principal, call.target),
            "put_scope": lambda call: service.put_scope(principal, call.target, expect_object(call.body)),
            "delete_scope": lambda call: service.delete_scope(principal, call.target),
            "agents": lambda call: {"agents": service.list_agents(principal)},
            "get_agent": lambda call: service.get_agent(principal, call.target),
            "put_agent": lambda call: service.put_agent(principal, call.target, expect_object(call.body)),
            "delete_agent": lambda call: service.delete_agent(principal, call.target),
            "budgets": lambda call: {"budgets": service.list_budgets(principal, call.params.get("scope"))},
            "get_budget": lambda call: service.get_budget(principal, call.target),
            "put_budget": lambda call: service.put_budget(principal, call.target, expect_object(call.body)),
            "delete_budget": lambda call: service.delete_budget(principal, call.target),
            "keys": lambda call: {"keys": service.list_keys(principal)},
            "create_key": self._create_key,
            "rotate_key": lambda call: service.rotate_key(principal, call.target),
            "revoke_key": lambda call: service.revoke_key(principal, call.target),
        }

    def _call(self, call: Call) -> _Answer:
        answer: _Answer = self._handlers[call.operation](call)
        return answer

    def close(self) -> None:
        self.engine.store.close()

    def __enter__(self) -> Local:
        return self

    # -- handlers: what the HTTP routes do for an admin key, without HTTP -----------------------
    def _authorize(self, call: Call) -> _Answer:
        return decision_json(self.engine.authorize(self.tenant, action_input(call.body, agent=None)))

    def _usage(self, call: Call) -> _Answer:
        result = self.engine.report_usage(self.tenant, action_input(call.body, agent=None))
        return usage_json(self.engine.tenant_config(self.tenant), result)

    def _commit(self, call: Call) -> _Answer:
        fields = resolve_request("commit", call.body)
        result = self.engine.commit(
            self.tenant, call.target, fields.amounts, outcome=fields.outcome, idempotency_key=fields.idempotency_key
        )
        return commit_json(self.engine.tenant_config(self.tenant), result)

    def _release(self, call: Call) -> _Answer:
        fields = resolve_request("release", call.body)
        result = self.engine.release(self.tenant, call.target, idempotency_key=fields.idempotency_key)
        return release_json(self.engine.tenant_config(self.tenant), result)

    def _extend(self, call: Call) -> _Answer:
        fields = resolve_request("extend", call.body)
        return extend_json(self.engine.extend(self.tenant, call.target, fields.lease_seconds))

    def _ledger(self, call: Call) -> _Answer:
        return self.service.ledger_page(self.principal, ledger_request(call.params))

    def _check(self, call: Call) -> _Answer:
        return check_json(self.engine.check(self.tenant))

    def _put_config(self, call: Call) -> _Answer:
        document = config_from_yaml(call.body) if isinstance(call.body, str) else call.body
        config = expect_object(document, "the config")
        is_dry_run = call.params.get("dry_run") == "true"
        return self.service.put_config(self.principal, config, is_dry_run=is_dry_run, source="config")

    def _create_key(self, call: Call) -> _Answer:
        role, agent, name = key_request(call.body)
        return self.service.create_key(self.principal, role=role, agent=agent, name=name)
