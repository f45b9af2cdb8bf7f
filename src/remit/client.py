"""The Python SDK: `Client` and `AsyncClient` over HTTP, `Local` in-process, and `action()`.

Every API method is written once, in `Calls`: it turns its arguments into a `Call` (the request
as data) and hands it to `_call`. `Client` sends the call with an `httpx.Client` and returns the
answer; `AsyncClient` returns a coroutine that sends it with an `httpx.AsyncClient`; `Local`
answers it in-process with the same `remit.wire` and `remit.service` functions the HTTP API
uses. So the three return the same dicts and raise the same errors, and there is one copy of
each method's signature.

`action()` is the two-phase contract as a context manager: authorize on enter (a non-allow
decision raises `Denied`), extend the lease in the background while the block runs, commit the
held amounts on a normal exit, release on any exception (KeyboardInterrupt and
asyncio.CancelledError included: a hold must never leak because the caller was interrupted).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import hashlib
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import orjson

from remit.errors import (
    ConfigError,
    Conflict,
    Denied,
    Forbidden,
    InvalidRequest,
    InvariantViolation,
    NotFound,
    Overloaded,
    RemitError,
    Unauthorized,
    Unavailable,
)
from remit.limits import LEASE_SECONDS_DEFAULT

__all__ = ["Action", "AsyncAction", "AsyncClient", "Call", "Calls", "Client"]

CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 30.0
"""A decision is answered within one batch; applying a large config or reading a ledger page takes longer."""
WRITE_TIMEOUT_SECONDS = 30.0
POOL_TIMEOUT_SECONDS = 10.0
"""How long a request waits for a free connection when every pooled one is busy."""
CONNECTIONS_MAX = 100
KEEPALIVE_CONNECTIONS_MAX = 20
EXTENSIONS_PER_LEASE = 3
"""The background extender renews a lease this many times per lease: two renewals can fail and it still lives."""
ACTION_ATTEMPTS_MAX = 4
"""`action()` tries its authorize, commit and release this many times on 503s (each keyed, so each acts once)."""
ACTION_RETRY_BACKOFF_SECONDS = 0.1
"""The first wait between attempts; each next one is three times longer (0.1, 0.3, 0.9 s)."""
IDEMPOTENCY_BASE_LENGTH_MAX = 180
"""A caller's key longer than this is hashed before `:commit` / `:release` is appended."""
ERROR_TEXT_LENGTH_MAX = 200
"""How much of a non-Remit error body (a proxy's HTML page) an error message quotes."""

Amount = str | int | decimal.Decimal
"""A decimal string in the meter's unit ("120.00"), a whole number, or a Decimal. Never a float."""

_R = TypeVar("_R")
_A = TypeVar("_A")
_Answer = dict[str, Any]


# == calls: one request as data ================================================================
@dataclass(frozen=True, slots=True)
class Call:
    """One API request: what `Client` sends over HTTP and `Local` answers in-process."""

    operation: str
    """The SDK method that made it (and the `Local` handler that answers it)."""
    method: str
    path: str
    target: str = ""
    """The id the path names (reservation, key, scope, agent or budget), unquoted."""
    params: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    """A JSON object, or YAML text (a config)."""


def _segment(text: str) -> str:
    return quote(text, safe="")


def _amount(value: Amount) -> Amount:
    # A Decimal becomes its exact text; anything else goes as it is, so the engine refuses a float
    # with the same error over HTTP and in-process.
    return format(value, "f") if isinstance(value, decimal.Decimal) else value


def merge_amounts(amounts: Mapping[str, Amount] | None, meter_amounts: Mapping[str, Amount]) -> dict[str, Amount]:
    """`amounts={...}` and keyword amounts (`usd="1.00"`) as one object; a meter given both ways is refused."""
    merged: dict[str, Amount] = {meter: _amount(value) for meter, value in (amounts or {}).items()}
    for meter, value in meter_amounts.items():
        if meter in merged:
            raise InvalidRequest(
                f"meter {meter!r} is given twice: in amounts and as a keyword", code="invalid_field", field="amounts"
            )
        merged[meter] = _amount(value)
    return merged


def _touches(touches: Mapping[str, Iterable[str]] | None) -> dict[str, object] | None:
    if touches is None:
        return None
    # A lone string is passed on as it is (and refused by the server), never split into characters.
    return {meter: entities if isinstance(entities, str) else list(entities) for meter, entities in touches.items()}


def _time(value: dt.datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, dt.datetime) else value


def _without_none(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


class Calls(Generic[_R, _A]):
    """Every API method, once. Each builds a `Call`; `_call` answers it with `_R`.

    `_R` is the answer dict for `Client` and `Local`, and an awaitable of it for `AsyncClient`;
    `_A` is what `action()` returns: an `Action` (`with`) or an `AsyncAction` (`async with`).
    Meter amounts go as keywords (`usd="120.00"`) or in `amounts={...}` (needed for a meter whose
    name is also a parameter, such as `task`).
    """

    agent: str | None = None
    """The agent an admin key acts as when a call names none (an agent key implies its own)."""

    def _call(self, call: Call) -> _R:
        raise NotImplementedError

    def _new_action(self, request: dict[str, Any]) -> _A:
        raise NotImplementedError

    # -- decisions ------------------------------------------------------------------------------
    def _act(
        self,
        operation: str,
        path: str,
        action: str,
        amounts: Mapping[str, Amount] | None,
        meter_amounts: Mapping[str, Amount],
        **fields: Any,
    ) -> _R:
        body = {"action": action, "amounts": merge_amounts(amounts, meter_amounts)}
        body.update(_without_none({**fields, "agent": fields.get("agent") or self.agent}))
        return self._call(Call(operation, "POST", path, body=body))

    def authorize(
        self,
        action: str,
        *,
        amounts: Mapping[str, Amount] | None = None,
        touches: Mapping[str, Iterable[str]] | None = None,
        agent: str | None = None,
        task: str | None = None,
        context: Mapping[str, Any] | None = None,
        priority: str | None = None,
        lease_seconds: int | None = None,
        idempotency_key: str | None = None,
        **meter_amounts: Amount,
    ) -> _R:
        """Hold the amounts on every budget of the agent's path, or deny saying why (`POST /v1/authorize`)."""
        return self._act(
            "authorize",
            "/v1/authorize",
            action,
            amounts,
            meter_amounts,
            touches=_touches(touches),
            agent=agent,
            task=task,
            context=context,
            priority=priority,
            lease_seconds=lease_seconds,
            idempotency_key=idempotency_key,
        )

    def usage(
        self,
        action: str,
        *,
        amounts: Mapping[str, Amount] | None = None,
        touches: Mapping[str, Iterable[str]] | None = None,
        agent: str | None = None,
        task: str | None = None,
        context: Mapping[str, Any] | None = None,
        priority: str | None = None,
        idempotency_key: str | None = None,
        **meter_amounts: Amount,
    ) -> _R:
        """Report usage that was never held (`POST /v1/usage`); an excess over a limit is flagged, not refused."""
        return self._act(
            "usage",
            "/v1/usage",
            action,
            amounts,
            meter_amounts,
            touches=_touches(touches),
            agent=agent,
            task=task,
            context=context,
            priority=priority,
            idempotency_key=idempotency_key,
        )

    def commit(
        self,
        reservation: str,
        amounts: Mapping[str, Amount] | None = None,
        *,
        outcome: str = "success",
        idempotency_key: str | None = None,
    ) -> _R:
        """Post the actual amounts (the held ones where omitted); the rest of the hold is released."""
        body: dict[str, Any] = {"outcome": outcome}
        if amounts is not None:
            body["amounts"] = merge_amounts(amounts, {})
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        path = f"/v1/reservations/{_segment(reservation)}/commit"
        return self._call(Call("commit", "POST", path, reservation, body=body))

    def release(self, reservation: str, *, idempotency_key: str | None = None) -> _R:
        path = f"/v1/reservations/{_segment(reservation)}/release"
        body = _without_none({"idempotency_key": idempotency_key})
        return self._call(Call("release", "POST", path, reservation, body=body))

    def extend(self, reservation: str, lease_seconds: int = LEASE_SECONDS_DEFAULT) -> _R:
        """Push the lease deadline to now + lease_seconds."""
        path = f"/v1/reservations/{_segment(reservation)}/extend"
        return self._call(Call("extend", "POST", path, reservation, body={"lease_seconds": lease_seconds}))

    def action(
        self,
        action: str,
        *,
        amounts: Mapping[str, Amount] | None = None,
        touches: Mapping[str, Iterable[str]] | None = None,
        agent: str | None = None,
        task: str | None = None,
        context: Mapping[str, Any] | None = None,
        priority: str | None = None,
        lease_seconds: int | None = None,
        idempotency_key: str | None = None,
        **meter_amounts: Amount,
    ) -> _A:
        """`with` (`async with` on AsyncClient): hold on enter — `Denied` unless allowed — commit on exit,
        release on an exception, extend the lease in the background meanwhile."""
        fields = {
            "touches": touches,
            "agent": agent,
            "task": task,
            "context": context,
            "priority": priority,
            "lease_seconds": lease_seconds,
            # Always keyed, so a retried authorize (after a timeout or a 503) cannot hold twice.
            "idempotency_key": idempotency_key or f"act-{uuid.uuid4().hex}",
        }
        return self._new_action({"action": action, "amounts": merge_amounts(amounts, meter_amounts), **fields})

    # -- reads ----------------------------------------------------------------------------------
    def headroom(self, scope: str | None = None) -> _R:
        return self._call(Call("headroom", "GET", "/v1/headroom", params=_without_none({"scope": scope})))

    def ledger(
        self,
        *,
        scope: str | None = None,
        agent: str | None = None,
        action: str | None = None,
        kind: str | None = None,
        since: dt.datetime | str | None = None,
        until: dt.datetime | str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
        order: str | None = None,
    ) -> _R:
        """One page of ledger entries, newest first unless `order="asc"`; pass `next_cursor` for the next."""
        params = _without_none(
            {
                "scope": scope,
                "agent": agent,
                "action": action,
                "kind": kind,
                "since": _time(since),
                "until": _time(until),
                "cursor": cursor,
                "limit": None if limit is None else str(limit),
                "order": order,
            }
        )
        return self._call(Call("ledger", "GET", "/v1/ledger", params=params))

    def check(self) -> _R:
        """Rebuild every counter from the ledger and compare with the live ones (admin)."""
        return self._call(Call("check", "GET", "/v1/check"))

    def whoami(self) -> _R:
        return self._call(Call("whoami", "GET", "/v1/whoami"))

    # -- config and its parts -------------------------------------------------------------------
    def get_config(self) -> _R:
        return self._call(Call("get_config", "GET", "/v1/config"))

    def put_config(self, document: Mapping[str, Any] | str, *, dry_run: bool = False) -> _R:
        """Apply a whole config (a dict, or YAML text); `dry_run=True` lists the changes and applies nothing."""
        params = {"dry_run": "true"} if dry_run else {}
        body = document if isinstance(document, str) else dict(document)
        return self._call(Call("put_config", "PUT", "/v1/config", params=params, body=body))

    def scopes(self) -> _R:
        return self._call(Call("scopes", "GET", "/v1/scopes"))

    def get_scope(self, path: str) -> _R:
        return self._call(Call("get_scope", "GET", f"/v1/scopes/{quote(path, safe='/:')}", path))

    def put_scope(self, path: str, scope: Mapping[str, Any]) -> _R:
        url = f"/v1/scopes/{quote(path, safe='/:')}"
        return self._call(Call("put_scope", "PUT", url, path, body=dict(scope)))

    def delete_scope(self, path: str) -> _R:
        return self._call(Call("delete_scope", "DELETE", f"/v1/scopes/{quote(path, safe='/:')}", path))

    def agents(self) -> _R:
        return self._call(Call("agents", "GET", "/v1/agents"))

    def get_agent(self, name: str) -> _R:
        return self._call(Call("get_agent", "GET", f"/v1/agents/{_segment(name)}", name))

    def put_agent(self, name: str, agent: Mapping[str, Any]) -> _R:
        return self._call(Call("put_agent", "PUT", f"/v1/agents/{_segment(name)}", name, body=dict(agent)))

    def delete_agent(self, name: str) -> _R:
        return self._call(Call("delete_agent", "DELETE", f"/v1/agents/{_segment(name)}", name))

    def budgets(self, scope: str | None = None) -> _R:
        return self._call(Call("budgets", "GET", "/v1/budgets", params=_without_none({"scope": scope})))

    def get_budget(self, budget: str) -> _R:
        return self._call(Call("get_budget", "GET", f"/v1/budgets/{_segment(budget)}", budget))

    def put_budget(self, budget: str, fields: Mapping[str, Any]) -> _R:
        """Create or replace a budget; `fields` names its `scope` (its id, and so its usage, is kept)."""
        url = f"/v1/budgets/{_segment(budget)}"
        return self._call(Call("put_budget", "PUT", url, budget, body=dict(fields)))

    def delete_budget(self, budget: str) -> _R:
        return self._call(Call("delete_budget", "DELETE", f"/v1/budgets/{_segment(budget)}", budget))

    # -- keys -----------------------------------------------------------------------------------
    def keys(self) -> _R:
        return self._call(Call("keys", "GET", "/v1/keys"))

    def create_key(self, role: str, agent: str | None = None, name: str | None = None) -> _R:
        """A new key; the answer's `key` is the whole key, shown this once."""
        body = _without_none({"role": role, "agent": agent, "name": name})
        return self._call(Call("create_key", "POST", "/v1/keys", body=body))

    def rotate_key(self, key_id: str) -> _R:
        """A new secret for the same key id; the old one stops working."""
        return self._call(Call("rotate_key", "POST", f"/v1/keys/{_segment(key_id)}/rotate", key_id))

    def revoke_key(self, key_id: str) -> _R:
        return self._call(Call("revoke_key", "DELETE", f"/v1/keys/{_segment(key_id)}", key_id))


# == actions: hold, run the block, commit or release ===========================================
def _is_transient(error: BaseException) -> bool:
    """A failure worth trying again (anything else stops the extender and ends a retry loop)."""
    return isinstance(error, (Unavailable, Overloaded))


def _with_retries(attempt: Callable[[], _Answer]) -> _Answer:
    """Run a keyed request again on a transient failure, a bounded number of times with backoff."""
    for number in range(ACTION_ATTEMPTS_MAX):
        try:
            return attempt()
        except (Unavailable, Overloaded):
            if number + 1 == ACTION_ATTEMPTS_MAX:
                raise
            time.sleep(ACTION_RETRY_BACKOFF_SECONDS * 3**number)
    raise AssertionError("unreachable")  # pragma: no cover


async def _with_retries_async(attempt: Callable[[], Awaitable[_Answer]]) -> _Answer:
    for number in range(ACTION_ATTEMPTS_MAX):
        try:
            return await attempt()
        except (Unavailable, Overloaded):
            if number + 1 == ACTION_ATTEMPTS_MAX:
                raise
            await asyncio.sleep(ACTION_RETRY_BACKOFF_SECONDS * 3**number)
    raise AssertionError("unreachable")  # pragma: no cover


class _ActionState:
    """What `Action` and `AsyncAction` share: the request, the decision and how the hold ended."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request
        self.lease_seconds: int = request.get("lease_seconds") or LEASE_SECONDS_DEFAULT
        self.decision: _Answer | None = None
        """The answer of authorize (set on entering the block)."""
        self.result: _Answer | None = None
        """The answer of the commit or release that ended the hold, once it has ended."""
        self.lease_expires_at: str | None = None
        self.extend_error: BaseException | None = None
        """Why the background extender stopped early, if it did."""

    @property
    def reservation(self) -> str:
        if self.decision is None or not self.decision.get("reservation"):
            raise RemitError("the action has no reservation: enter its `with` block first")
        return str(self.decision["reservation"])

    def key_for(self, kind: str) -> str:
        """The idempotency key of this action's commit or release: a retry of it acts once."""
        base = str(self.request["idempotency_key"])
        if len(base) > IDEMPOTENCY_BASE_LENGTH_MAX:
            base = hashlib.sha256(base.encode()).hexdigest()
        return f"{base}:{kind}"

    @property
    def extend_every_seconds(self) -> float:
        return self.lease_seconds / EXTENSIONS_PER_LEASE

    def _accept(self, decision: _Answer) -> bool:
        """Record the decision; False if it is not an allow (the caller releases any hold and raises)."""
        self.decision = decision
        self.lease_expires_at = decision.get("lease_expires_at")
        return decision.get("decision") == "allow"

    def _denied(self) -> Denied:
        return Denied(self.decision or {}, action=self.request.get("action"))

    def _check_open(self) -> None:
        if self.result is not None:
            raise Conflict(
                f"reservation {self.reservation} is already {self.result.get('status')} in this block",
                code=f"already_{self.result.get('status')}",
            )

    def _note_failed_release(self, error: BaseException, release_error: RemitError) -> None:
        error.add_note(
            f"remit: releasing {self.reservation} failed ({release_error.code}: {release_error.message}); "
            "its lease will expire it"
        )


class Action(_ActionState):
    """`with api.action(...) as act:` for `Client` and `Local`; see the module docstring."""

    def __init__(self, api: Calls[_Answer, Any], request: dict[str, Any]) -> None:
        super().__init__(request)
        self._api = api
        self._stop = threading.Event()
        self._extender: threading.Thread | None = None

    def __enter__(self) -> Action:
        if not self._accept(_with_retries(lambda: self._api.authorize(**self.request))):
            if self.decision and self.decision.get("reservation"):
                self._api.release(self.reservation)  # a future non-allow outcome that holds must not leak it
            raise self._denied()
        self._extender = threading.Thread(
            target=self._extend_until_stopped, name=f"remit-lease-{self.reservation}", daemon=True
        )
        self._extender.start()
        return self

    def _extend_until_stopped(self) -> None:
        while not self._stop.wait(self.extend_every_seconds):
            try:
                self.lease_expires_at = self._api.extend(self.reservation, self.lease_seconds)["lease_expires_at"]
            except Exception as error:
                if self._stop.is_set():
                    return  # raced the commit or release that ended the hold: not a failure
                if not _is_transient(error):
                    self.extend_error = error
                    return

    def _resolve(self, resolution: Callable[[], _Answer]) -> _Answer:
        # The extender is told to stop first but joined only after the hold is resolved, so an
        # interrupt while it finishes an extension cannot leave the hold unresolved.
        self._stop.set()
        try:
            self.result = _with_retries(resolution)
        finally:
            if self._extender is not None:
                self._extender.join()
        return self.result

    def commit(
        self, amounts: Mapping[str, Amount] | None = None, *, outcome: str = "success", **meter_amounts: Amount
    ) -> _Answer:
        """Commit actual amounts now (held amounts where omitted); leaving the block then does nothing more."""
        self._check_open()
        merged = merge_amounts(amounts, meter_amounts) if amounts is not None or meter_amounts else None
        key = self.key_for("commit")
        return self._resolve(lambda: self._api.commit(self.reservation, merged, outcome=outcome, idempotency_key=key))

    def release(self) -> _Answer:
        """Give the hold back now (the action was not taken); leaving the block then does nothing more."""
        self._check_open()
        key = self.key_for("release")
        return self._resolve(lambda: self._api.release(self.reservation, idempotency_key=key))

    def __exit__(
        self, error_type: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.result is not None:
            return
        if error is None:
            self.commit()
            return
        try:
            self.release()
        except RemitError as release_error:
            self._note_failed_release(error, release_error)


class _Background:
    """Requests an `AsyncClient` lets finish after their caller was cancelled; `close()` waits for them."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def keep(self, task: asyncio.Task[Any]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved

    async def shielded(self, request: Awaitable[_Answer]) -> _Answer:
        """Await a request that a cancellation of the caller must not cut short (it finishes in the background)."""
        task: asyncio.Task[_Answer] = asyncio.ensure_future(request)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            self.keep(task)
            raise

    async def wait(self, timeout_seconds: float) -> None:
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout_seconds)


class AsyncAction(_ActionState):
    """`async with client.action(...) as act:` for `AsyncClient`; the extender is an asyncio task."""

    def __init__(self, api: Calls[Awaitable[_Answer], Any], request: dict[str, Any], background: _Background) -> None:
        super().__init__(request)
        self._api = api
        self._background = background
        self._extender: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncAction:
        authorizing = asyncio.ensure_future(_with_retries_async(lambda: self._api.authorize(**self.request)))
        try:
            decision = await asyncio.shield(authorizing)
        except asyncio.CancelledError:
            # The server may place the hold after all: release it when the answer arrives.
            authorizing.add_done_callback(self._release_orphan)
            self._background.keep(authorizing)
            raise
        if not self._accept(decision):
            if self.decision and self.decision.get("reservation"):
                await self._background.shielded(self._api.release(self.reservation))
            raise self._denied()
        self._extender = asyncio.get_running_loop().create_task(self._extend_until_stopped())
        return self

    def _release_orphan(self, authorizing: asyncio.Task[_Answer]) -> None:
        if authorizing.cancelled() or authorizing.exception() is not None:
            return
        reservation = authorizing.result().get("reservation")
        if reservation:
            self._background.keep(asyncio.ensure_future(self._api.release(str(reservation))))

    async def _extend_until_stopped(self) -> None:
        while True:
            await asyncio.sleep(self.extend_every_seconds)
            try:
                answer = await self._api.extend(self.reservation, self.lease_seconds)
            except Exception as error:
                if not _is_transient(error):
                    self.extend_error = error
                    return
            else:
                self.lease_expires_at = answer["lease_expires_at"]

    async def _resolve(self, resolution: Callable[[], Awaitable[_Answer]]) -> _Answer:
        # The extender is cancelled first but awaited only after the hold is resolved; the
        # resolution is shielded, so cancelling the caller again cannot cut it short.
        extender, self._extender = self._extender, None
        if extender is not None:
            extender.cancel()
        try:
            self.result = await self._background.shielded(_with_retries_async(resolution))
        finally:
            if extender is not None:
                # wait(), not `await extender`: the extender's CancelledError must not pass for ours.
                await asyncio.wait([extender])
        return self.result

    async def commit(
        self, amounts: Mapping[str, Amount] | None = None, *, outcome: str = "success", **meter_amounts: Amount
    ) -> _Answer:
        """Commit actual amounts now (held amounts where omitted); leaving the block then does nothing more."""
        self._check_open()
        merged = merge_amounts(amounts, meter_amounts) if amounts is not None or meter_amounts else None
        key = self.key_for("commit")
        return await self._resolve(
            lambda: self._api.commit(self.reservation, merged, outcome=outcome, idempotency_key=key)
        )

    async def release(self) -> _Answer:
        """Give the hold back now (the action was not taken); leaving the block then does nothing more."""
        self._check_open()
        key = self.key_for("release")
        return await self._resolve(lambda: self._api.release(self.reservation, idempotency_key=key))

    async def __aexit__(
        self, error_type: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.result is not None:
            return
        if error is None:
            await self.commit()
            return
        try:
            await self.release()
        except RemitError as release_error:
            self._note_failed_release(error, release_error)


# == HTTP: one request and answer core for both clients ========================================
def _http_arguments(call: Call) -> dict[str, Any]:
    arguments: dict[str, Any] = {"params": dict(call.params)}
    if isinstance(call.body, str):
        arguments["content"] = call.body.encode()
        arguments["headers"] = {"content-type": "application/yaml"}
    elif call.body is not None:
        arguments["content"] = orjson.dumps(call.body)
        arguments["headers"] = {"content-type": "application/json"}
    return arguments


def _answer(response: httpx.Response) -> _Answer:
    """The JSON object of a 2xx answer, or the `RemitError` its error body names."""
    where = f"{response.request.method} {response.request.url}"
    try:
        body = orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        body = None
    if response.is_success and isinstance(body, dict):
        return body
    if response.is_success:
        error = RemitError(f"{where}: the answer is not a JSON object: {response.text[:ERROR_TEXT_LENGTH_MAX]!r}")
        error.code = "unexpected_response"
        raise error
    raise error_from_response(response.status_code, body, where=where, text=response.text)


def error_from_response(status: int, body: object, *, where: str, text: str = "") -> RemitError:
    """The exception an error answer stands for: the class its status and code name, the code kept."""
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping) or not isinstance(error.get("code"), str):
        message = f"{where}: HTTP {status} without a Remit error body: {text[:ERROR_TEXT_LENGTH_MAX]!r}"
        if status >= 500:
            return Unavailable(message)
        unexpected = RemitError(message)
        unexpected.code = "unexpected_response"
        return unexpected
    code: str = error["code"]
    message = str(error.get("message") or code)
    details = error.get("details")
    mapped = _mapped_error(status, code, message, details)
    mapped.code = code
    mapped.details = details
    return mapped


def _mapped_error(status: int, code: str, message: str, details: Any) -> RemitError:
    if code == "invalid_config":
        problems = details.get("errors") if isinstance(details, Mapping) else None
        return ConfigError(message, list(problems) if isinstance(problems, list) else [])
    if code == "invariant_violation":
        return InvariantViolation(message, details=details)
    if status == 401:
        return Unauthorized(message, details=details)
    if status == 403:
        return Forbidden(message, details=details)
    if status == 404:
        return NotFound(message, details=details)
    if status == 409:
        return Conflict(message, code=code, details=details)
    if status == 503:
        return Overloaded(message, details=details) if code == "overloaded" else Unavailable(message, details=details)
    if 400 <= status < 500:
        field_name = details.get("field") if isinstance(details, Mapping) else None
        return InvalidRequest(message, code=code, field=field_name if isinstance(field_name, str) else None)
    return RemitError(message, details=details)


def _unreachable(url: str, call: Call, error: httpx.TransportError) -> Unavailable:
    if isinstance(error, httpx.TimeoutException):
        return Unavailable(
            f"{call.method} {url}{call.path}: no answer in time ({type(error).__name__}); it may or may not "
            "have taken effect: retry with the same idempotency_key"
        )
    return Unavailable(f"cannot reach Remit at {url}: {type(error).__name__}: {error}")


def _http_options(url: str, key: str, timeout_seconds: float, connect_timeout_seconds: float) -> dict[str, Any]:
    if not isinstance(key, str) or not key:
        raise InvalidRequest("key must be an API key (rk_…)", code="invalid_field", field="key")
    return {
        "base_url": url,
        "headers": {"authorization": f"Bearer {key}", "user-agent": "remit-python-sdk"},
        "timeout": httpx.Timeout(
            connect=connect_timeout_seconds,
            read=timeout_seconds,
            write=WRITE_TIMEOUT_SECONDS,
            pool=POOL_TIMEOUT_SECONDS,
        ),
        "limits": httpx.Limits(max_connections=CONNECTIONS_MAX, max_keepalive_connections=KEEPALIVE_CONNECTIONS_MAX),
        "follow_redirects": False,
    }


class _SyncApi(Calls[_Answer, Action]):
    """`action()` and `with` for the synchronous `Client` and `Local`."""

    def _new_action(self, request: dict[str, Any]) -> Action:
        return Action(self, request)

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> _SyncApi:
        return self

    def __exit__(
        self, error_type: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class Client(_SyncApi):
    """Remit over HTTP, synchronously. Thread-safe: one per process is enough.

    `key` is an agent key (which implies its agent) or an admin key (then each action names its
    agent, or `agent=` here names a default). Errors are `remit.errors.RemitError` subclasses
    with the server's code; a server that cannot be reached raises `Unavailable`.
    """

    def __init__(
        self,
        url: str,
        *,
        key: str,
        agent: str | None = None,
        timeout_seconds: float = READ_TIMEOUT_SECONDS,
        connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
    ) -> None:
        self.url = url.rstrip("/")
        self.agent = agent
        self._http = httpx.Client(**_http_options(self.url, key, timeout_seconds, connect_timeout_seconds))

    def _call(self, call: Call) -> _Answer:
        try:
            response = self._http.request(call.method, call.path, **_http_arguments(call))
        except httpx.TransportError as error:
            raise _unreachable(self.url, call, error) from error
        return _answer(response)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self


class AsyncClient(Calls[Awaitable[_Answer], AsyncAction]):
    """Remit over HTTP for asyncio: the same methods as `Client`, each awaited."""

    def __init__(
        self,
        url: str,
        *,
        key: str,
        agent: str | None = None,
        timeout_seconds: float = READ_TIMEOUT_SECONDS,
        connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
    ) -> None:
        self.url = url.rstrip("/")
        self.agent = agent
        self._http = httpx.AsyncClient(**_http_options(self.url, key, timeout_seconds, connect_timeout_seconds))
        self._background = _Background()
        self._timeout_seconds = timeout_seconds

    def _call(self, call: Call) -> Coroutine[Any, Any, _Answer]:
        return self._send(call)

    async def _send(self, call: Call) -> _Answer:
        try:
            response = await self._http.request(call.method, call.path, **_http_arguments(call))
        except httpx.TransportError as error:
            raise _unreachable(self.url, call, error) from error
        return _answer(response)

    def _new_action(self, request: dict[str, Any]) -> AsyncAction:
        return AsyncAction(self, request, self._background)

    async def close(self) -> None:
        """Wait for releases and commits that cancelled actions left running, then close the connections."""
        await self._background.wait(self._timeout_seconds)
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, error_type: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()


# == Local: the same calls, answered in-process ================================================
