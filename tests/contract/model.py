"""An independent in-memory model of the engine's ledger semantics, for the stateful test.

Written from DESIGN.md and the engine brief, not from `remit.domain`: it imports nothing
from `remit`, reads the same config document the engine is given, and keeps its own
balances as plain integers per budget instance and window. The stateful test runs every
request through the engine and through this model and compares the answers and the store.

Semantics modelled (each is a rule a reader can check against the docs):
- Amounts are decimal strings rounded *up* to the meter's scale; limits are exact.
- A request consults every budget on the agent's path (`<scope>/agent:<name>` up to `/`)
  whose action glob selects the action and whose meter the request names; per-task budgets
  one instance per task id; a request they apply to that names no task is refused
  (`task_required`) before anything is decided.
- A sum meter asks for its amount; a distinct meter asks one unit per touched entity not yet
  counted in the budget's current window.
- Authorize denies when an enforced budget refuses (per-action maximum, more than the whole
  limit, or more than limit - used - held); otherwise it holds on every consulted budget.
  Shadow budgets hold too and only record `shadow_deny`.
- Commit releases the hold and counts the actual amounts in the window current at commit
  time; the part of a posting beyond limit - (used - overrun) - held is overrun. Distinct meters count
  the touched entities not yet counted in that window.
- A hold whose lease has run out (deadline <= now) is expired by the next batch of the
  tenant's requests, before anything in it is decided, or by `expire_holds`; a commit then is a
  late commit (counted, nothing released), a release or extend is refused (`expired`).
- A hold resolves once; resolving it again is refused (`already_committed`,
  `already_released`) unless the same idempotency key repeats the same request, which gets
  the first answer; the key with another request is `idempotency_mismatch`.
- Post-hoc usage counts like a commit without a hold.
- A new config may change limits and per-action maxima: balances and holds are kept, and
  every later decision or posting (a commit of an earlier hold too) uses the new limit. A
  limit may be lowered below what is used and held: nothing is taken back, requests are
  denied until enough usage leaves the window.
- Calendar windows (hour, day) follow the tenant's time zone; `total` never resets; a rolling
  window of N seconds is kept in buckets of 1 s (N <= 60) or N/60 s, and usage leaves it a
  bucket at a time.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any
from zoneinfo import ZoneInfo

US = 1_000_000
HOUR_US = 3600 * US
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
ROOT = "/"


def base_units(text: str | int, scale: int) -> int:
    """A decimal amount in base units, rounded up to the scale."""
    value = Decimal(str(text)) * (Decimal(10) ** scale)
    return int(value.to_integral_value(rounding=ROUND_CEILING))


@dataclass(frozen=True)
class BudgetSpec:
    id: str
    scope: str
    meter: str
    is_distinct: bool
    limit: int
    window: str
    """`hour`, `day`, `total` or `rolling`."""
    rolling_seconds: int = 0
    per_action_max: int | None = None
    actions: str = "*"
    is_shadow: bool = False
    is_per_task: bool = False


def _parse_window(text: str) -> tuple[str, int]:
    if text.startswith("rolling:"):
        number, unit = text[len("rolling:") : -1], text[-1]
        return "rolling", int(number) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    if text not in ("hour", "day", "total"):
        raise ValueError(f"the model knows hour, day, total and rolling windows, not {text!r}")
    return text, 0


def _agent_scope(parent: str, name: str) -> str:
    return f"agent:{name}" if parent == ROOT else f"{parent}/agent:{name}"


def _path_up(scope: str) -> list[str]:
    if scope == ROOT:
        return [ROOT]
    parts = scope.split("/")
    return ["/".join(parts[:i]) for i in range(len(parts), 0, -1)] + [ROOT]


class Clockwork:
    """Window arithmetic in one time zone."""

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz

    def local(self, now_us: int) -> dt.datetime:
        return (EPOCH + dt.timedelta(microseconds=now_us)).astimezone(self.tz)

    def window_start(self, spec: BudgetSpec, now_us: int) -> int:
        """Calendar windows: the start of the window holding now. Rolling: the current bucket."""
        if spec.window == "total":
            return 0
        if spec.window == "rolling":
            width = self.bucket_us(spec)
            return now_us - now_us % width
        local = self.local(now_us)
        if spec.window == "hour":
            offset_us = int(local.utcoffset().total_seconds()) * US  # type: ignore[union-attr]
            return now_us - (now_us + offset_us) % HOUR_US
        midnight = dt.datetime(local.year, local.month, local.day, tzinfo=self.tz)
        delta = midnight.astimezone(dt.UTC) - EPOCH
        return (delta.days * 86400 + delta.seconds) * US

    @staticmethod
    def bucket_us(spec: BudgetSpec) -> int:
        seconds = 1 if spec.rolling_seconds <= 60 else spec.rolling_seconds // 60
        return seconds * US

    def live_from(self, spec: BudgetSpec, now_us: int) -> int:
        """Rolling windows: the oldest bucket start still inside the window at now."""
        width = self.bucket_us(spec)
        count = spec.rolling_seconds * US // width
        return now_us - now_us % width - (count - 1) * width


@dataclass
class Balance:
    """One budget instance: live holds, and used / overrun / counted entities per window or bucket."""

    held: int = 0
    used: dict[int, int] = field(default_factory=dict)
    overrun: dict[int, int] = field(default_factory=dict)
    counted: dict[int, set[str]] = field(default_factory=dict)


@dataclass
class Part:
    spec: BudgetSpec
    instance: str
    amount: int
    entities: tuple[str, ...] = ()
    """Distinct meters: every entity the action touches on this meter."""


@dataclass
class Hold:
    id: str
    amounts: dict[str, int]
    parts: list[Part]
    lease_expires_us: int
    status: str = "held"
    was_expired: bool = False
    resolve_key: str | None = None
    result: tuple[str, Any, Outcome] | None = None
    """(kind, actual amounts as requested, Outcome) of the resolution, for a retry with its key."""


@dataclass(frozen=True)
class Report:
    limit: int
    used: int
    held: int
    requested: int
    remaining: int
    is_shadow: bool


@dataclass(frozen=True)
class Verdict:
    outcome: str
    reports: dict[str, Report]
    """Budget id → its numbers as the answer should state them."""
    reasons: frozenset[tuple[str, str]]
    """(reason code, budget id)."""


@dataclass(frozen=True)
class Outcome:
    """What a commit, release or extend should answer: a result, or an error code."""

    kind: str
    """`commit`, `release`, `extend` or `error`."""
    value: tuple[Any, ...]


class Model:
    def __init__(self, document: Mapping[str, Any]) -> None:
        self.clock = Clockwork(ZoneInfo(document["tenant"]["timezone"]))
        self.meters = {
            name: (meter.get("kind", "sum") == "distinct", meter.get("scale", 0))
            for name, meter in document["meters"].items()
        }
        self.specs: list[BudgetSpec] = []
        self.agents: dict[str, str] = {}
        self.spec_by_id: dict[str, BudgetSpec] = {}
        self._read_config(document)
        self.balances: dict[tuple[str, str], Balance] = {}
        self.holds: dict[str, Hold] = {}
        self.answered: dict[str, tuple[Any, ...]] = {}
        """Idempotency key → fingerprint of the request that first used it."""

    def _read_config(self, document: Mapping[str, Any]) -> None:
        self.specs = []
        self._read_budgets(ROOT, document["tenant"].get("budgets", []))
        for path, scope in document["scopes"].items():
            self._read_budgets(path, (scope or {}).get("budgets", []))
        self.agents = {}
        for name, agent in document["agents"].items():
            self.agents[name] = agent["scope"]
            self._read_budgets(_agent_scope(agent["scope"], name), agent.get("budgets", []))
        self.spec_by_id = {spec.id: spec for spec in self.specs}

    def apply_config(self, document: Mapping[str, Any]) -> None:
        """A new config for the same tenant: limits and per-action maxima may change; meters, windows,
        ids and the time zone stay. Balances (usage, overrun, holds) are kept: a limit never loses
        usage. A live hold keeps its amounts; what it commits later is measured against the new limit."""
        assert document["tenant"]["timezone"] == self.clock.tz.key, "the time zone does not change here"
        self._read_config(document)
        for hold in self.holds.values():
            for part in hold.parts:
                part.spec = self.spec_by_id[part.spec.id]

    def _read_budgets(self, scope: str, docs: Sequence[Mapping[str, Any]]) -> None:
        for doc in docs:
            is_distinct, scale = self.meters[doc["meter"]]
            window, seconds = _parse_window(doc["window"])
            pam = doc.get("per_action_max")
            self.specs.append(
                BudgetSpec(
                    id=doc["id"],
                    scope=scope,
                    meter=doc["meter"],
                    is_distinct=is_distinct,
                    limit=base_units(doc["limit"], scale),
                    window=window,
                    rolling_seconds=seconds,
                    per_action_max=None if pam is None else base_units(pam, scale),
                    actions=doc.get("actions", "*"),
                    is_shadow=doc.get("mode") == "shadow",
                    is_per_task=doc.get("per") == "task",
                )
            )

    # -- balances ------------------------------------------------------------------------------
    def balance(self, key: tuple[str, str]) -> Balance:
        return self.balances.setdefault(key, Balance())

    def used(self, spec: BudgetSpec, key: tuple[str, str], now_us: int) -> int:
        return self._in_window(spec, self.balance(key).used, now_us)

    def overrun(self, spec: BudgetSpec, key: tuple[str, str], now_us: int) -> int:
        return self._in_window(spec, self.balance(key).overrun, now_us)

    def _in_window(self, spec: BudgetSpec, sums: dict[int, int], now_us: int) -> int:
        if spec.window == "rolling":
            floor = self.clock.live_from(spec, now_us)
            return sum(amount for start, amount in sums.items() if start >= floor)
        return sums.get(self.clock.window_start(spec, now_us), 0)

    def counted(self, spec: BudgetSpec, key: tuple[str, str], now_us: int) -> set[str]:
        return self.balance(key).counted.setdefault(self.clock.window_start(spec, now_us), set())

    def _post(
        self, spec: BudgetSpec, key: tuple[str, str], now_us: int, amount: int, entities: Sequence[str]
    ) -> tuple[int, int]:
        """Count usage now; returns (counted, overrun)."""
        if spec.is_distinct:
            counted = self.counted(spec, key, now_us)
            fresh = [entity for entity in dict.fromkeys(entities) if entity not in counted]
            counted.update(fresh)
            amount = len(fresh)
        balance = self.balance(key)
        authorised = self.used(spec, key, now_us) - self.overrun(spec, key, now_us)
        room = spec.limit - authorised - balance.held
        over = max(0, amount - max(0, room))
        start = self.clock.window_start(spec, now_us)
        balance.used[start] = balance.used.get(start, 0) + amount
        if over:
            balance.overrun[start] = balance.overrun.get(start, 0) + over
        return amount, over

    def _report(self, spec: BudgetSpec, key: tuple[str, str], now_us: int, requested: int) -> Report:
        used, held = self.used(spec, key, now_us), self.balance(key).held
        return Report(spec.limit, used, held, requested, max(0, spec.limit - used - held), spec.is_shadow)

    # -- requests --------------------------------------------------------------------------------
    def consulted(
        self,
        agent: str,
        action: str,
        amounts: Mapping[str, int],
        touches: Mapping[str, Sequence[str]],
        task: str | None,
    ) -> list[tuple[BudgetSpec, tuple[str, str]]]:
        path = _path_up(_agent_scope(self.agents[agent], agent))
        chosen = []
        for spec in self.specs:
            if spec.scope not in path or not fnmatch.fnmatchcase(action, spec.actions):
                continue
            if spec.meter not in amounts and spec.meter not in touches:
                continue
            if spec.is_per_task and task is None:
                continue
            chosen.append((spec, (spec.id, (task or "") if spec.is_per_task else "")))
        return chosen

    def parse(
        self, amounts: Mapping[str, str], touches: Mapping[str, Sequence[str]]
    ) -> tuple[dict[str, int], dict[str, tuple[str, ...]]]:
        parsed = {meter: base_units(text, self.meters[meter][1]) for meter, text in amounts.items()}
        return parsed, {meter: tuple(dict.fromkeys(entities)) for meter, entities in touches.items()}

    def _asks(
        self,
        spec: BudgetSpec,
        key: tuple[str, str],
        now_us: int,
        amounts: Mapping[str, int],
        touches: Mapping[str, tuple[str, ...]],
    ) -> tuple[int, int]:
        """(requested, size for the per-action maximum)."""
        if spec.is_distinct:
            touched = touches.get(spec.meter, ())
            counted = self.counted(spec, key, now_us)
            return sum(1 for entity in touched if entity not in counted), len(touched)
        return amounts[spec.meter], amounts[spec.meter]

    def _refusal(self, spec: BudgetSpec, key: tuple[str, str], now_us: int, requested: int, size: int) -> str | None:
        if spec.per_action_max is not None and size > spec.per_action_max:
            return "per_action_max_exceeded"
        if requested > spec.limit:
            return "exceeds_limit"
        if requested > spec.limit - self.used(spec, key, now_us) - self.balance(key).held:
            return "budget_exhausted"
        return None

    def authorize(self, now_us: int, request: Mapping[str, Any], reservation_id: str | None) -> Verdict:
        """Decide a new (not replayed) request; on allow, hold under the engine's reservation id.

        Like every batch, it first expires the tenant's holds whose lease has run out.
        """
        self.expire_holds(now_us)
        amounts, touches = self.parse(request["amounts"], request["touches"])
        consulted = self.consulted(request["agent"], request["action"], amounts, touches, request["task"])
        asks = {spec.id: self._asks(spec, key, now_us, amounts, touches) for spec, key in consulted}
        reasons = set()
        is_denied = False
        for spec, key in consulted:
            code = self._refusal(spec, key, now_us, *asks[spec.id])
            if code is None:
                continue
            if spec.is_shadow:
                reasons.add(("shadow_deny", spec.id))
            else:
                is_denied = True
                reasons.add((code, spec.id))
        if not is_denied:
            parts = []
            for spec, key in consulted:
                self.balance(key).held += asks[spec.id][0]
                parts.append(Part(spec, key[1], asks[spec.id][0], touches.get(spec.meter, ())))
            if reservation_id is not None:
                lease_us = now_us + request["lease_seconds"] * US
                self.holds[reservation_id] = Hold(reservation_id, amounts, parts, lease_us)
        reports = {spec.id: self._report(spec, key, now_us, asks[spec.id][0]) for spec, key in consulted}
        return Verdict("deny" if is_denied else "allow", reports, frozenset(reasons))

    def report_usage(self, now_us: int, request: Mapping[str, Any]) -> tuple[dict[str, Report], dict[str, int]]:
        self.expire_holds(now_us)
        amounts, touches = self.parse(request["amounts"], request["touches"])
        consulted = self.consulted(request["agent"], request["action"], amounts, touches, request["task"])
        requested = {spec.id: self._asks(spec, key, now_us, amounts, touches)[0] for spec, key in consulted}
        overrun: dict[str, int] = {}
        for spec, key in consulted:
            _, over = self._post(spec, key, now_us, amounts.get(spec.meter, 0), touches.get(spec.meter, ()))
            if over:
                overrun[spec.meter] = max(overrun.get(spec.meter, 0), over)
        reports = {spec.id: self._report(spec, key, now_us, requested[spec.id]) for spec, key in consulted}
        return reports, overrun

    def problem(self, request: Mapping[str, Any]) -> str | None:
        """Why a request is refused before it is decided: a per-task budget applies, no task is named."""
        if request["task"] is not None:
            return None
        path = _path_up(_agent_scope(self.agents[request["agent"]], request["agent"]))
        for spec in self.specs:
            if not spec.is_per_task or spec.scope not in path:
                continue
            if not fnmatch.fnmatchcase(request["action"], spec.actions):
                continue
            if spec.meter in request["amounts"] or spec.meter in request["touches"]:
                return "task_required"
        return None

    def forget(self, key: str | None) -> None:
        """A refused request's key was never used."""
        if key is not None:
            self.answered.pop(key, None)

    def is_replay(self, key: str | None, fingerprint: tuple[Any, ...]) -> bool | None:
        """True: answer from the first request; False: a new key (now claimed); None: key reused for another request."""
        if key is None:
            return False
        first = self.answered.get(key)
        if first is None:
            self.answered[key] = fingerprint
            return False
        return True if first == fingerprint else None

    # -- resolving holds -------------------------------------------------------------------------
    def _expire_if_due(self, hold: Hold, now_us: int) -> bool:
        if hold.status != "held" or hold.lease_expires_us > now_us:
            return False
        for part in hold.parts:
            self.balance((part.spec.id, part.instance)).held -= part.amount
        hold.status = "expired"
        return True

    def expire_holds(self, now_us: int) -> int:
        return sum(1 for hold in self.holds.values() if self._expire_if_due(hold, now_us))

    def resolve(
        self, now_us: int, rid: str, kind: str, *, amounts: Mapping[str, str] | None, key: str | None, lease: int = 0
    ) -> Outcome:
        """Commit, release or extend a reservation (after the batch has expired every due hold)."""
        self.expire_holds(now_us)
        hold = self.holds.get(rid)
        if hold is None:
            return Outcome("error", ("not_found",))
        if hold.status == "held":
            if kind == "extend":
                hold.lease_expires_us = now_us + lease * US
                return Outcome("extend", (hold.lease_expires_us,))
            if kind == "release":
                for part in hold.parts:
                    self.balance((part.spec.id, part.instance)).held -= part.amount
                return self._finish(hold, "released", key, amounts, Outcome("release", (dict(hold.amounts),)))
            return self._commit(hold, now_us, amounts, key, is_late=False)
        if key is not None and key == hold.resolve_key and hold.result is not None:
            if hold.result[:2] != (kind, self._request(amounts)):
                return Outcome("error", ("idempotency_mismatch",))
            return hold.result[2]
        if hold.status == "expired":
            if kind == "commit":
                return self._commit(hold, now_us, amounts, key, is_late=True)
            return Outcome("error", ("expired",))
        return Outcome("error", ("already_committed" if hold.status == "committed" else "already_released",))

    def _request(self, amounts: Mapping[str, str] | None) -> tuple[tuple[str, int], ...] | None:
        """What a retry with the same key must repeat: the actual amounts as given (None: as held)."""
        if amounts is None:
            return None
        return tuple(sorted((meter, base_units(text, self.meters[meter][1])) for meter, text in amounts.items()))

    def _commit(
        self, hold: Hold, now_us: int, amounts: Mapping[str, str] | None, key: str | None, *, is_late: bool
    ) -> Outcome:
        actuals = dict(hold.amounts)
        for meter, text in (amounts or {}).items():
            if meter not in hold.amounts:
                return Outcome("error", ("meter_not_held",))
            actuals[meter] = base_units(text, self.meters[meter][1])
        committed: dict[str, int] = {}
        overrun: dict[str, int] = {}
        for part in hold.parts:
            key_ = (part.spec.id, part.instance)
            if not is_late:
                self.balance(key_).held -= part.amount
            counted, over = self._post(part.spec, key_, now_us, actuals.get(part.spec.meter, 0), part.entities)
            meter = part.spec.meter
            committed[meter] = max(committed.get(meter, 0), counted) if part.spec.is_distinct else actuals[meter]
            if over:
                overrun[meter] = max(overrun.get(meter, 0), over)
        released = {} if is_late else {meter: max(0, held - actuals[meter]) for meter, held in hold.amounts.items()}
        if is_late:
            hold.was_expired = True
        outcome = Outcome("commit", (committed, released, overrun, is_late))
        return self._finish(hold, "committed", key, amounts, outcome)

    def _finish(
        self, hold: Hold, status: str, key: str | None, amounts: Mapping[str, str] | None, outcome: Outcome
    ) -> Outcome:
        hold.status = status
        hold.resolve_key = key
        hold.result = (outcome.kind, self._request(amounts), outcome)
        return outcome
