"""The service's use cases beyond deciding actions: keys, config and its CRUD, headroom, the ledger.

Every method takes the caller's `Principal` and works inside that principal's tenant only: an
id of another tenant is simply not found. The HTTP API and the CLI (`--database-url`) both call
these; the hot path (authorize / commit / …) goes through `remit.batching.AsyncBatcher`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from remit.changes import describe_budget, diff_configs
from remit.domain.amounts import format_amount
from remit.domain.budgets import ROOT_SCOPE, Budget, Counter, default_budget_id
from remit.domain.evaluation import resets_at
from remit.domain.ledger import LedgerEntry
from remit.domain.tenant import TenantConfig, agent_scope
from remit.domain.windows import US_PER_SECOND, BoundsCache, parse_window
from remit.engine import Engine
from remit.errors import Conflict, InvalidRequest, NotFound, Overloaded, Unauthorized
from remit.keys import NewKey, Principal, Role, display_prefix, new_key, parse_key, secret_matches
from remit.limits import (
    BURN_RATE_ENTRIES_MAX,
    CONFIG_EDIT_ATTEMPTS_MAX,
    KEY_CACHE_SECONDS_MAX,
    KEY_CACHE_SIZE_MAX,
    KEYS_PER_TENANT_MAX,
    LEDGER_PAGE_SIZE_DEFAULT,
    LEDGER_PAGE_SIZE_MAX,
)
from remit.operations import check_name
from remit.store.base import KeyRow, LedgerFilter, Transaction
from remit.wire import LedgerRequest, format_time

US_PER_HOUR = 3600 * US_PER_SECOND


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """What `bootstrap_tenant` did: keys are shown only to the process that created them."""

    is_created: bool
    admin_key: str | None
    agent_keys: dict[str, str]


def in_subtree(path: str, scope: str | None) -> bool:
    if scope is None or scope == ROOT_SCOPE:
        return True
    return path == scope or path.startswith(scope + "/")


def key_json(row: KeyRow) -> dict[str, Any]:
    return {
        "id": row.key_id,
        "prefix": display_prefix(row.key_id),
        "role": row.role,
        "agent": row.agent,
        "name": row.name,
        "created_at": format_time(row.created_at_us),
        "rotated_at": format_time(row.rotated_at_us),
        "revoked_at": format_time(row.revoked_at_us),
        "is_active": row.revoked_at_us is None,
    }


class Service:
    """Thread-safe; one per process, beside the engine it wraps."""

    def __init__(self, engine: Engine, *, key_cache_seconds: float = KEY_CACHE_SECONDS_MAX) -> None:
        self.engine = engine
        self.key_cache_seconds = key_cache_seconds
        self._keys: dict[str, tuple[str, Principal, float]] = {}
        """key id → (secret hash, principal, monotonic expiry): a revocation elsewhere lands within the TTL."""
        self._keys_lock = threading.Lock()
        self._bounds = BoundsCache()

    @property
    def clock(self) -> Callable[[], int]:
        return self.engine.clock

    # == tenants and keys =======================================================================
    def bootstrap_tenant(
        self, tenant_id: str, document: Mapping[str, Any] | None, *, source: str = "<config>"
    ) -> Bootstrap:
        """Create a tenant with `document` and its first keys, unless it already has an admin key.

        Safe for several processes at once: the tenant row lock orders them, and only the one
        that finds no admin key creates keys (and so is the only one to print them).
        """
        self.engine.create_tenant(tenant_id)
        version, _ = self.engine.config_document(tenant_id)
        if document is not None and version == 0:
            self.engine.apply_config(tenant_id, document, source=source)  # a concurrent twin's is a no-op
        agents = sorted(self.engine.tenant_config(tenant_id).agents) if document is not None else []
        now_us = self.clock()
        with self.engine.store.transaction() as tx:
            tx.lock_tenants([tenant_id])
            if tx.count_admin_keys(tenant_id):
                return Bootstrap(False, None, {})
            admin = new_key()
            tx.insert_key(
                KeyRow(
                    tenant_id, admin.key_id, admin.secret_sha256, "admin", None, "first admin key", now_us, None, None
                )
            )
            agent_keys: dict[str, str] = {}
            for agent in agents:
                key = new_key()
                tx.insert_key(
                    KeyRow(tenant_id, key.key_id, key.secret_sha256, "agent", agent, None, now_us, None, None)
                )
                agent_keys[agent] = key.text
            tx.commit()
        return Bootstrap(True, admin.text, agent_keys)

    def cached_principal(self, authorization: str | None) -> Principal | None:
        """The principal of a header whose key this process checked recently (no I/O), else None."""
        key_id, secret = _bearer(authorization)
        cached = self._keys.get(key_id)
        if cached is None or cached[2] <= time.monotonic():
            return None
        if not secret_matches(secret, cached[0]):
            # Perhaps rotated by another process since this one cached it: `authenticate` reads
            # the key again, and caches it if this secret is its new one. A wrong secret leaves
            # the cached key as it is (key ids are not secret: a guess must not evict the key).
            return None
        return cached[1]

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an `Authorization: Bearer <key>` header, or Unauthorized."""
        principal = self.cached_principal(authorization)
        if principal is not None:
            return principal
        key_id, secret = _bearer(authorization)
        now = time.monotonic()
        with self.engine.store.transaction(is_read_only=True) as tx:
            row = tx.find_key(key_id)
        if row is None or row.revoked_at_us is not None or not secret_matches(secret, row.secret_sha256):
            raise Unauthorized("the API key is not valid (unknown, revoked or rotated)")
        principal = Principal(row.tenant_id, key_id, Role(row.role), row.agent)
        with self._keys_lock:
            if len(self._keys) >= KEY_CACHE_SIZE_MAX:
                self._keys.clear()
            # Expiries are spread over the second half of the TTL: keys first seen together
            # (a fleet starting up) would otherwise all be looked up again at the same moment.
            self._keys[key_id] = (row.secret_sha256, principal, now + self.key_cache_seconds * random.uniform(0.5, 1))
        return principal

    def _forget_key(self, key_id: str) -> None:
        with self._keys_lock:
            self._keys.pop(key_id, None)

    def create_key(self, principal: Principal, *, role: str, agent: str | None, name: str | None) -> dict[str, Any]:
        principal.require_admin()
        if role not in ("admin", "agent"):
            raise InvalidRequest("role must be admin or agent", code="invalid_field", field="role")
        if role == "agent":
            check_name(agent, "agent")
            if agent not in self._config(principal.tenant_id).agents:
                raise InvalidRequest(f"agent {agent!r} is not configured", code="unknown_agent", field="agent")
        elif agent is not None:
            raise InvalidRequest("an admin key has no agent", code="invalid_field", field="agent")
        if name is not None:
            check_name(name, "name")
        key = new_key()
        row = KeyRow(principal.tenant_id, key.key_id, key.secret_sha256, role, agent, name, self.clock(), None, None)
        with self.engine.store.transaction() as tx:
            tx.lock_tenants([principal.tenant_id])  # the count and the insert, one writer at a time
            if len(tx.list_keys(principal.tenant_id)) >= KEYS_PER_TENANT_MAX:
                raise InvalidRequest(f"a tenant has at most {KEYS_PER_TENANT_MAX} keys", code="too_many_keys")
            tx.insert_key(row)
            tx.commit()
        return {**key_json(row), "key": key.text}

    def list_keys(self, principal: Principal) -> list[dict[str, Any]]:
        principal.require_admin()
        with self.engine.store.transaction(is_read_only=True) as tx:
            return [key_json(row) for row in tx.list_keys(principal.tenant_id)]

    def rotate_key(self, principal: Principal, key_id: str) -> dict[str, Any]:
        """A new secret for the same key id; the old secret stops working at once here, within the TTL elsewhere."""
        principal.require_admin()
        key = new_key(key_id)
        with self.engine.store.transaction() as tx:
            if not tx.rotate_key(principal.tenant_id, key_id, key.secret_sha256, self.clock()):
                raise NotFound(f"key {key_id!r} does not exist or is revoked")
            row = tx.find_key(key_id)
            tx.commit()
        self._forget_key(key_id)
        if row is None:
            raise NotFound(f"key {key_id!r} does not exist")
        return {**key_json(row), "key": NewKey(key_id, key.secret).text}

    def revoke_key(self, principal: Principal, key_id: str) -> dict[str, Any]:
        principal.require_admin()
        with self.engine.store.transaction() as tx:
            # The tenant lock orders concurrent revocations: two of the last two admin keys
            # revoked at once must not both see "another admin key remains".
            tx.lock_tenants([principal.tenant_id])
            row = tx.find_key(key_id)
            if row is None or row.tenant_id != principal.tenant_id:
                raise NotFound(f"key {key_id!r} does not exist")
            if row.revoked_at_us is None:
                if row.role == "admin" and tx.count_admin_keys(principal.tenant_id) <= 1:
                    raise Conflict("this is the tenant's last admin key; create another first", code="last_admin_key")
                tx.revoke_key(principal.tenant_id, key_id, self.clock())
                row = tx.find_key(key_id)
            tx.commit()
        self._forget_key(key_id)
        if row is None:
            raise NotFound(f"key {key_id!r} does not exist")
        return key_json(row)

    # == config ================================================================================
    def _config(self, tenant_id: str) -> TenantConfig:
        with self.engine.store.transaction(is_read_only=True) as tx:
            return self.engine.fresh_config(tx, tenant_id)

    def get_config(self, principal: Principal) -> dict[str, Any]:
        principal.require_admin()
        version, document = self.engine.config_document(principal.tenant_id)
        return {"version": version, "config": document}

    def put_config(
        self, principal: Principal, document: Mapping[str, Any], *, is_dry_run: bool, source: str = "<request>"
    ) -> dict[str, Any]:
        """Apply (or plan) a whole config; the answer lists what changed (nothing, the second time)."""
        principal.require_admin()
        return self._apply(principal.tenant_id, document, is_dry_run=is_dry_run, source=source)

    def _apply(
        self,
        tenant_id: str,
        document: Mapping[str, Any],
        *,
        is_dry_run: bool,
        source: str,
        expected_version: int | None = None,
    ) -> dict[str, Any]:
        before = self._config(tenant_id)
        revoked: list[str] = []

        def revoke_removed_agents_keys(tx: Transaction, old: TenantConfig, new: TenantConfig) -> None:
            # A retired agent's keys go with it, whichever way it was removed, in the same
            # transaction: re-added later (perhaps in another scope), old keys must not act again.
            removed = old.agents.keys() - new.agents.keys()
            for row in tx.list_keys(tenant_id) if removed else []:
                if row.agent in removed and row.revoked_at_us is None:
                    tx.revoke_key(tenant_id, row.key_id, self.clock())
                    revoked.append(row.key_id)

        after = self.engine.apply_config(
            tenant_id,
            document,
            source=source,
            is_dry_run=is_dry_run,
            expected_version=expected_version,
            on_apply=revoke_removed_agents_keys,
        )
        changes = diff_configs(before, after)
        version = before.version if is_dry_run else after.version
        answer: dict[str, Any] = {"dry_run": is_dry_run, "version": version, "changes": changes}
        revoked = list(dict.fromkeys(revoked))  # an apply retried after a deadlock revokes the same keys again
        for key_id in revoked:
            self._forget_key(key_id)
        if revoked:
            answer["revoked_keys"] = revoked
        return answer

    def edit_config(
        self, principal: Principal, edit: Callable[[dict[str, Any]], None], *, source: str
    ) -> dict[str, Any]:
        """Read the document, change it with `edit`, apply it — retried if another writer got in between."""
        principal.require_admin()
        for _ in range(CONFIG_EDIT_ATTEMPTS_MAX):
            version, document = self.engine.config_document(principal.tenant_id)
            edit(document)
            try:
                return self._apply(
                    principal.tenant_id, document, is_dry_run=False, source=source, expected_version=version
                )
            except Conflict as error:
                if error.code != "config_changed":
                    raise
        raise Overloaded("the config kept changing under this edit; retry")

    # -- CRUD over the document: scopes, agents, budgets --------------------------------------
    def list_scopes(self, principal: Principal) -> list[dict[str, Any]]:
        principal.require_admin()
        tenant = self._config(principal.tenant_id)
        return [self._scope_json(tenant, path) for path in sorted(tenant.scopes)]

    def get_scope(self, principal: Principal, path: str) -> dict[str, Any]:
        principal.require_admin()
        tenant = self._config(principal.tenant_id)
        if path not in tenant.scopes:
            raise NotFound(f"scope {path!r} does not exist")
        return self._scope_json(tenant, path)

    def _scope_json(self, tenant: TenantConfig, path: str) -> dict[str, Any]:
        scope = tenant.scopes[path]
        budgets = [{"id": b.id, **describe_budget(b)} for b in tenant.budgets if b.scope == path]
        return {"path": path, "owner": scope.owner, "budgets": budgets}

    def put_scope(self, principal: Principal, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create or update a scope. A body without `budgets` keeps the scope's budgets (changing an
        owner must not switch enforcement off); `"budgets": []` removes them on purpose."""

        def edit(document: dict[str, Any]) -> None:
            scopes = document.setdefault("scopes", {})
            kept = {"budgets": (scopes.get(path) or {}).get("budgets", [])} if "budgets" not in body else {}
            scopes[path] = {**kept, **body}

        return self.edit_config(principal, edit, source=f"scopes.{path}")

    def delete_scope(self, principal: Principal, path: str) -> dict[str, Any]:
        def edit(document: dict[str, Any]) -> None:
            if path not in document.get("scopes", {}):
                raise NotFound(f"scope {path!r} does not exist")
            del document["scopes"][path]

        return self.edit_config(principal, edit, source=f"scopes.{path}")

    def list_agents(self, principal: Principal) -> list[dict[str, Any]]:
        principal.require_admin()
        _, document = self.engine.config_document(principal.tenant_id)
        return [{"name": name, **agent} for name, agent in sorted(document.get("agents", {}).items())]

    def get_agent(self, principal: Principal, name: str) -> dict[str, Any]:
        if not principal.is_admin and principal.agent != name:
            raise NotFound(f"agent {name!r} does not exist")  # an agent key sees only itself
        _, document = self.engine.config_document(principal.tenant_id)
        agent = document.get("agents", {}).get(name)
        if agent is None:
            raise NotFound(f"agent {name!r} does not exist")
        return {"name": name, **agent}

    def put_agent(self, principal: Principal, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        check_name(name, "agent")

        def edit(document: dict[str, Any]) -> None:
            document.setdefault("agents", {})[name] = dict(body)

        return self.edit_config(principal, edit, source=f"agents.{name}")

    def delete_agent(self, principal: Principal, name: str) -> dict[str, Any]:
        """Remove the agent from the config and revoke its keys: a retired agent cannot act again."""

        def edit(document: dict[str, Any]) -> None:
            if name not in document.get("agents", {}):
                raise NotFound(f"agent {name!r} does not exist")
            del document["agents"][name]

        return self.edit_config(principal, edit, source=f"agents.{name}")

    def list_budgets(self, principal: Principal, scope: str | None = None) -> list[dict[str, Any]]:
        principal.require_admin()
        tenant = self._config(principal.tenant_id)
        return [{"id": b.id, **describe_budget(b)} for b in tenant.budgets if in_subtree(b.scope, scope)]

    def get_budget(self, principal: Principal, budget_id: str) -> dict[str, Any]:
        principal.require_admin()
        budget = self._config(principal.tenant_id).budget(budget_id)
        if budget is None:
            raise NotFound(f"budget {budget_id!r} does not exist")
        return {"id": budget.id, **describe_budget(budget)}

    def put_budget(self, principal: Principal, budget_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace the budget `budget_id` on `body["scope"]` (its id is kept, so its usage is)."""
        check_name(budget_id, "budget")
        fields = dict(body)
        scope = fields.pop("scope", None)
        if not isinstance(scope, str) or not scope:
            raise InvalidRequest(
                "scope is required: the scope path the budget belongs to", code="invalid_field", field="scope"
            )

        def edit(document: dict[str, Any]) -> None:
            _remove_budget(document, budget_id)
            _budget_list(document, scope).append({**fields, "id": budget_id})

        return self.edit_config(principal, edit, source=f"budgets.{budget_id}")

    def delete_budget(self, principal: Principal, budget_id: str) -> dict[str, Any]:
        def edit(document: dict[str, Any]) -> None:
            if not _remove_budget(document, budget_id):
                raise NotFound(f"budget {budget_id!r} does not exist")

        return self.edit_config(principal, edit, source=f"budgets.{budget_id}")

    # == reads: headroom and the ledger =========================================================
    def headroom(self, principal: Principal, scope: str | None) -> dict[str, Any]:
        """Every budget in the subtree: its window now, burn over the last hour and projected exhaustion."""
        now_us = self.clock()
        with self.engine.store.transaction(is_read_only=True) as tx:
            tenant = self.engine.fresh_config(tx, principal.tenant_id)
            budgets = [b for b in tenant.budgets if in_subtree(b.scope, scope)]
            is_known = scope is None or scope == ROOT_SCOPE or any(in_subtree(p, scope) for p in tenant.scopes)
            if not principal.is_admin:
                agent = tenant.agents.get(principal.agent or "")
                own = agent.own_scope if agent is not None else None
                # An agent key sees its own path only; any other scope is "not found", existing or not.
                is_known = own is not None and (scope is None or in_subtree(own, scope) or in_subtree(scope, own))
                budgets = [b for b in budgets if own is not None and in_subtree(own, b.scope)]
            if not is_known and not budgets:
                raise NotFound(f"scope {scope!r} does not exist")
            counters = tx.all_counters(principal.tenant_id)
            recent = tx.recent_postings(principal.tenant_id, now_us - US_PER_HOUR, BURN_RATE_ENTRIES_MAX)
        by_budget: dict[str, list[Counter]] = {}
        for (budget_id, _), counter in counters.items():
            by_budget.setdefault(budget_id, []).append(counter)
        burned, span_us = _burned(recent, now_us)
        rows = [
            self._headroom_row(
                tenant, b, by_budget.get(b.id, []), burned=burned.get(b.id, 0), span_us=span_us, now_us=now_us
            )
            for b in budgets
        ]
        return {"scope": scope or ROOT_SCOPE, "at": format_time(now_us), "budgets": rows}

    def _headroom_row(
        self,
        tenant: TenantConfig,
        budget: Budget,
        counters: list[Counter],
        *,
        burned: int,
        span_us: int,
        now_us: int,
    ) -> dict[str, Any]:
        instances = counters or [Counter((budget.id, ""))]
        for counter in instances:
            counter.advance(budget, now_us, tenant.timezone, self._bounds)
        # A per-task budget shows its busiest task: the one closest to its limit.
        counter = max(instances, key=lambda c: c.used_now(budget, now_us) + c.held)
        used, held = counter.used_now(budget, now_us), counter.held
        remaining = max(0, budget.limit - used - held)
        reset_us = resets_at(budget, counter, now_us, tenant.timezone, self._bounds)
        burn_per_hour = burned * US_PER_HOUR // span_us
        scale = budget.meter.scale
        row = {"budget": budget.id, **describe_budget(budget)}
        row.update(
            {
                "used": format_amount(used, scale),
                "held": format_amount(held, scale),
                "remaining": format_amount(remaining, scale),
                "resets_at": format_time(reset_us),
                "burn_rate_per_hour": format_amount(burn_per_hour, scale),
                "projected_exhaustion_at": format_time(_exhaustion_us(remaining, burn_per_hour, now_us, reset_us)),
            }
        )
        if budget.is_per_task:
            row["tasks"] = sum(1 for c in instances if c.key[1])
        return row

    def ledger_page(self, principal: Principal, asked: LedgerRequest) -> dict[str, Any]:
        return self.ledger(
            principal,
            asked.query,
            scope=asked.scope,
            cursor=asked.cursor,
            limit=asked.limit,
            is_newest_first=asked.is_newest_first,
        )

    def ledger(
        self,
        principal: Principal,
        query: LedgerFilter,
        *,
        scope: str | None = None,
        cursor: str | None = None,
        limit: int = LEDGER_PAGE_SIZE_DEFAULT,
        is_newest_first: bool = True,
    ) -> dict[str, Any]:
        """One page of entries; `next_cursor` continues it (None at the end)."""
        if not 1 <= limit <= LEDGER_PAGE_SIZE_MAX:
            raise InvalidRequest(f"limit must be 1 to {LEDGER_PAGE_SIZE_MAX}", code="invalid_field", field="limit")
        cursor_id = _parse_cursor(cursor)
        with self.engine.store.transaction(is_read_only=True) as tx:
            tenant = self.engine.fresh_config(tx, principal.tenant_id)
            if not principal.is_admin:
                if query.agent is not None and query.agent != principal.agent:
                    return {"entries": [], "next_cursor": None}
                query = LedgerFilter(
                    principal.agent, query.agents, query.action, query.kind, query.since_us, query.until_us
                )
            if scope is not None and scope != ROOT_SCOPE:
                is_known = any(in_subtree(path, scope) for path in tenant.scopes)
                if not principal.is_admin:  # an agent key: its own path only, others as if missing
                    agent = tenant.agents.get(principal.agent or "")
                    own = agent.own_scope if agent is not None else None
                    is_known = own is not None and (in_subtree(own, scope) or in_subtree(scope, own))
                if not is_known:
                    raise NotFound(f"scope {scope!r} does not exist")
                agents = [a.name for a in tenant.agents.values() if in_subtree(a.scope, scope)]
                query = LedgerFilter(query.agent, agents, query.action, query.kind, query.since_us, query.until_us)
            entries = tx.ledger_query(
                principal.tenant_id, query, cursor_id=cursor_id, is_newest_first=is_newest_first, limit=limit
            )
        next_cursor = str(entries[-1].id) if len(entries) == limit and entries[-1].id is not None else None
        return {"entries": [_entry_json(tenant, e) for e in entries], "next_cursor": next_cursor}


def _bearer(authorization: str | None) -> tuple[str, str]:
    if not authorization:
        raise Unauthorized("missing Authorization header (expected: Bearer <key>)")
    scheme, _, text = authorization.partition(" ")
    if scheme.lower() != "bearer" or not text.strip():
        raise Unauthorized("the Authorization header must read: Bearer <key>")
    return parse_key(text.strip())


def _budget_list(document: dict[str, Any], scope: str) -> list[dict[str, Any]]:
    if scope == ROOT_SCOPE:
        tenant: dict[str, Any] = document.setdefault("tenant", {})
        budgets: list[dict[str, Any]] = tenant.setdefault("budgets", [])
        return budgets
    marker = "/agent:"
    if marker in scope:
        parent, name = scope.rsplit(marker, 1)
        agent = document.get("agents", {}).get(name)
        if agent is None or agent.get("scope") != parent:
            raise NotFound(f"agent scope {scope!r} does not exist")
        agent_budgets: list[dict[str, Any]] = agent.setdefault("budgets", [])
        return agent_budgets
    scopes = document.setdefault("scopes", {})
    if scope not in scopes:
        raise NotFound(f"scope {scope!r} does not exist; create it first (PUT /v1/scopes/{scope})")
    if scopes[scope] is None:
        scopes[scope] = {}
    scope_budgets: list[dict[str, Any]] = scopes[scope].setdefault("budgets", [])
    return scope_budgets


def _remove_budget(document: dict[str, Any], budget_id: str) -> bool:
    """Remove the budget with this id (given or default) wherever it is in the document."""
    lists: list[tuple[str, list[dict[str, Any]]]] = [(ROOT_SCOPE, document.get("tenant", {}).get("budgets", []))]
    lists += [(path, (scope or {}).get("budgets", [])) for path, scope in document.get("scopes", {}).items()]
    lists += [
        (agent_scope(agent.get("scope", ""), name), agent.get("budgets", []))
        for name, agent in document.get("agents", {}).items()
    ]
    for scope, budgets in lists:
        for index, doc in enumerate(budgets):
            if (doc.get("id") or _default_id(scope, doc)) == budget_id:
                del budgets[index]
                return True
    return False


def _default_id(scope: str, doc: Mapping[str, Any]) -> str | None:
    try:
        window = parse_window(doc.get("window", ""))
    except (InvalidRequest, ValueError):
        return None
    return default_budget_id(scope, str(doc.get("meter")), window, doc.get("actions", "*"), doc.get("per") == "task")


def _burned(recent: list[tuple[int, list[Any]]], now_us: int) -> tuple[dict[str, int], int]:
    """Usage per budget over the last hour, and the span it covers (shorter if the scan hit its cap)."""
    burned: dict[str, int] = {}
    for _, postings in recent:
        for posting in postings:
            if posting.used > 0:
                burned[posting.budget_id] = burned.get(posting.budget_id, 0) + posting.used
    span_us = US_PER_HOUR
    if len(recent) >= BURN_RATE_ENTRIES_MAX:
        span_us = max(US_PER_SECOND, now_us - recent[-1][0])
    return burned, span_us


def _exhaustion_us(remaining: int, burn_per_hour: int, now_us: int, reset_us: int | None) -> int | None:
    """When the remaining room runs out at the current burn — None if it never would, or only after the reset."""
    if remaining <= 0:
        return now_us
    if burn_per_hour <= 0:
        return None
    at_us = now_us + remaining * US_PER_HOUR // burn_per_hour
    if reset_us is not None and at_us >= reset_us:
        return None
    return at_us


def _parse_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 18:
        raise InvalidRequest("cursor is not one this API returned", code="invalid_field", field="cursor")
    return int(cursor)


def _entry_json(tenant: TenantConfig, entry: LedgerEntry) -> dict[str, Any]:
    postings = []
    for posting in entry.postings:
        budget = tenant.budget(posting.budget_id)
        scale = budget.meter.scale if budget is not None else 0
        item: dict[str, Any] = {
            "budget": posting.budget_id,
            "instance": posting.instance or None,
            "used": format_amount(posting.used, scale),
            "held": format_amount(posting.held, scale),
            "overrun": format_amount(posting.overrun, scale),
        }
        if budget is None:
            item["is_base_units"] = True  # the budget has since been removed: amounts are raw
        if posting.entities:
            item["entities"] = list(posting.entities)
        postings.append(item)
    return {
        "id": str(entry.id),
        "at": format_time(entry.at_us),
        "kind": entry.kind.value,
        "reservation": entry.reservation_id,
        "agent": entry.agent,
        "action": entry.action,
        "postings": postings,
        "detail": entry.detail,
    }
