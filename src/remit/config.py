"""Config as code: the YAML/JSON document of DESIGN.md §4, validated, and turned into a TenantConfig.

Every problem is reported with the file, the path inside it and what is wrong, e.g.
`examples/remit.yaml: scopes.sales/renewals.budgets[1].window: unknown window 'hourly' …`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pydantic
import yaml

from remit.domain.amounts import Meter, MeterKind, parse_exact_amount
from remit.domain.budgets import ROOT_SCOPE, Budget, Mode, default_budget_id
from remit.domain.decisions import Priority
from remit.domain.tenant import Agent, Scope, TenantConfig, agent_scope
from remit.domain.windows import WindowKind, parse_window
from remit.errors import ConfigError, InvalidRequest
from remit.limits import (
    AGENTS_PER_TENANT_MAX,
    BUDGETS_PER_TENANT_MAX,
    CONFIG_BYTES_MAX,
    LIMIT_BASE_UNITS_MAX,
    METER_SCALE_MAX,
    NAME_LENGTH_MAX,
    SCOPE_DEPTH_MAX,
    SCOPE_PATH_LENGTH_MAX,
    SCOPES_PER_TENANT_MAX,
)

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]*$")
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]*$")


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=False)


def _check_amount(value: object) -> object:
    # Before pydantic's own coercion, which would read `false` as 0 and `1.5` as a float.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError('an amount is a decimal string such as "12.50" (or an integer)')
    return value


Amount = Annotated[str | int, pydantic.BeforeValidator(_check_amount)]


class BudgetDoc(_Model):
    meter: str
    limit: Amount
    window: str
    per_action_max: Amount | None = None
    actions: str = "*"
    mode: Literal["enforce", "shadow"] = "enforce"
    per: Literal["scope", "task"] = "scope"
    id: str | None = None


class MeterDoc(_Model):
    kind: Literal["sum", "distinct"] = "sum"
    scale: int = pydantic.Field(default=0, ge=0, le=METER_SCALE_MAX, strict=True)


class ScopeDoc(_Model):
    owner: str | None = None
    budgets: list[BudgetDoc] = pydantic.Field(default_factory=list)


class AgentDoc(_Model):
    scope: str
    priority: Literal["interactive", "scheduled", "background"] = "scheduled"
    owner: str | None = None
    purpose: str | None = None
    budgets: list[BudgetDoc] = pydantic.Field(default_factory=list)


class TenantDoc(_Model):
    timezone: str | None = None
    """IANA zone of calendar windows; left out, the tenant keeps the zone it was created with."""
    name: str | None = None
    budgets: list[BudgetDoc] = pydantic.Field(default_factory=list)


class ConfigDoc(_Model):
    tenant: TenantDoc = pydantic.Field(default_factory=TenantDoc)
    meters: dict[str, MeterDoc] = pydantic.Field(default_factory=dict)
    scopes: dict[str, ScopeDoc | None] = pydantic.Field(default_factory=dict)
    agents: dict[str, AgentDoc] = pydantic.Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ParsedConfig:
    document: dict[str, Any]
    """The validated document with defaults filled in: what is stored and compared."""
    timezone: str | None


def _path_text(location: tuple[int | str, ...]) -> str:
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or "(document)"


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file; errors name the file and the line."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as error:
        raise ConfigError(
            f"{file}: cannot read: {error.strerror}", [{"path": "", "message": str(error.strerror)}]
        ) from None
    if len(raw) > CONFIG_BYTES_MAX:
        raise ConfigError(f"{file}: larger than {CONFIG_BYTES_MAX} bytes", [{"path": "", "message": "too large"}])
    try:
        document = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(
            f"{file}:{where} not valid YAML: {problem}", [{"path": "", "message": str(problem)}]
        ) from None
    except RecursionError:
        raise ConfigError(f"{file}: nested too deeply", [{"path": "", "message": "nested too deeply"}]) from None
    if document is None:
        # Applied, an empty config removes every meter, scope, agent and budget (and revokes the
        # agents' keys): that must be written on purpose, as `{}`, as PUT /v1/config requires.
        raise ConfigError(
            f"{file}: the file holds no config; write one (or {{}} to remove everything)",
            [{"path": "", "message": "empty"}],
        )
    if not isinstance(document, dict):
        raise ConfigError(f"{file}: the document must be a mapping", [{"path": "", "message": "not a mapping"}])
    return document


def parse_document(document: Mapping[str, Any], *, source: str = "<config>") -> ParsedConfig:
    """Validate a config document; raise ConfigError listing every problem with its path."""
    if not isinstance(document, Mapping):
        raise ConfigError(
            f"{source}: the document must be a mapping", [{"path": "(document)", "message": "not a mapping"}]
        )
    try:
        model = ConfigDoc.model_validate(dict(document))
    except pydantic.ValidationError as error:
        found = [
            {"path": _path_text(tuple(e["loc"])), "message": e["msg"].removeprefix("Value error, ")}
            for e in error.errors()
        ]
        raise config_error(source, found) from None
    problems: list[dict[str, str]] = []
    _check(model, problems)
    if problems:
        raise config_error(source, problems)
    return ParsedConfig(model.model_dump(mode="json"), model.tenant.timezone)


def with_timezone(parsed: ParsedConfig, timezone: str) -> ParsedConfig:
    """The document with the tenant's zone filled in where it left it out."""
    if parsed.timezone is not None:
        return parsed
    document = {**parsed.document, "tenant": {**parsed.document["tenant"], "timezone": timezone}}
    return ParsedConfig(document, timezone)


def extend_lineage(lineage: Mapping[str, Any], tenant: TenantConfig) -> dict[str, Any]:
    """Every meter (kind, scale) and budget identity (meter, window, per) declared so far.

    Counters outlive the config that made them: a removed budget keeps its counter, so a meter
    or budget id that comes back must come back meaning what it meant.
    """
    meters = dict(lineage.get("meters", {}))
    budgets = dict(lineage.get("budgets", {}))
    for name, meter in tenant.meters.items():
        meters.setdefault(name, [meter.kind.value, meter.scale])
    for budget in tenant.budgets:
        budgets.setdefault(budget.id, [budget.meter.name, budget.window_label, budget.is_per_task])
    return {"meters": meters, "budgets": budgets}


def transition_problems(
    lineage: Mapping[str, Any], old: TenantConfig, new: TenantConfig, *, has_usage: bool
) -> list[dict[str, str]]:
    """What a new config may not change, because counters depend on it.

    A meter's kind and scale give its counters their meaning (a scale change would read cents as
    micro-dollars); a budget id keeps its counters, so it cannot move to another meter, window or
    per-task split — checked against everything ever declared (`lineage`), not only the config in
    force, so removing and re-adding cannot get round it; and calendar windows are cut in the
    tenant's zone, so the zone cannot move while any budget has usage or holds.
    """
    problems = []
    known_meters = lineage.get("meters", {})
    known_budgets = lineage.get("budgets", {})
    for name, meter in new.meters.items():
        if name not in known_meters:
            continue
        kind, scale = known_meters[name]
        if (kind, scale) != (meter.kind.value, meter.scale):
            problems.append(
                {
                    "path": f"meters.{name}",
                    "message": f"a meter's kind and scale cannot change ({kind}, scale {scale} → "
                    f"{meter.kind.value}, scale {meter.scale}); declare a meter with a new name instead",
                }
            )
    for budget in new.budgets:
        identity = known_budgets.get(budget.id)
        if identity is None:
            continue
        if list(identity) != [budget.meter.name, budget.window_label, budget.is_per_task]:
            problems.append(
                {
                    "path": f"budget {budget.id}",
                    "message": "a budget id keeps its counters: it cannot move to another meter, window or per-task "
                    "split; give the budget a new id",
                }
            )
    if has_usage and old.timezone.key != new.timezone.key:
        problems.append(
            {
                "path": "tenant.timezone",
                "message": f"the time zone cannot change from {old.timezone.key} to {new.timezone.key} while budgets "
                "have usage or holds in their current windows",
            }
        )
    return problems


def config_error(source: str, problems: list[dict[str, str]]) -> ConfigError:
    first = problems[0]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return ConfigError(f"{source}: {first['path']}: {first['message']}{more}", problems)


def is_known_timezone(name: str) -> bool:
    """Whether `name` is an IANA time zone this machine knows (calendar windows are cut in it)."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _check(model: ConfigDoc, problems: list[dict[str, str]]) -> None:
    def problem(path: str, message: str) -> None:
        problems.append({"path": path, "message": message})

    if model.tenant.timezone is not None and not is_known_timezone(model.tenant.timezone):
        problem("tenant.timezone", f"unknown IANA time zone {model.tenant.timezone!r}")
    for name, meter in model.meters.items():
        if not _NAME.match(name) or len(name) > NAME_LENGTH_MAX:
            problem(f"meters.{name}", "a meter name is letters, digits, _ . : @ -")
        if meter.kind == "distinct" and meter.scale != 0:
            problem(f"meters.{name}.scale", "a distinct meter counts entities: its scale must be 0")
    for path in model.scopes:
        _check_scope_path(path, f"scopes.{path}", problem)
    if len(model.scopes) > SCOPES_PER_TENANT_MAX:
        problem("scopes", f"more than {SCOPES_PER_TENANT_MAX} scopes")
    if len(model.agents) > AGENTS_PER_TENANT_MAX:
        problem("agents", f"more than {AGENTS_PER_TENANT_MAX} agents")
    for name, agent in model.agents.items():
        if not _NAME.match(name) or len(name) > NAME_LENGTH_MAX:
            problem(f"agents.{name}", "an agent name is letters, digits, _ . : @ -")
        if agent.scope != ROOT_SCOPE and agent.scope not in model.scopes:
            problem(f"agents.{name}.scope", f"scope {agent.scope!r} is not declared under scopes")
    seen: dict[str, str] = {}
    count = 0
    for where, scope, budgets in _all_budgets(model):
        for index, budget in enumerate(budgets):
            count += 1
            _check_budget(model, f"{where}.budgets[{index}]", scope, budget, seen=seen, problem=problem)
    if count > BUDGETS_PER_TENANT_MAX:
        problem("scopes", f"more than {BUDGETS_PER_TENANT_MAX} budgets")


def _check_scope_path(path: str, where: str, problem: Any) -> None:
    if path == ROOT_SCOPE:
        return
    segments = path.split("/")
    if len(path) > SCOPE_PATH_LENGTH_MAX or len(segments) > SCOPE_DEPTH_MAX:
        problem(where, f"a scope path is at most {SCOPE_PATH_LENGTH_MAX} characters and {SCOPE_DEPTH_MAX} levels")
    elif not all(_SEGMENT.match(segment) for segment in segments):
        problem(where, "a scope path is segments of letters, digits, _ . : @ - joined by /")


def _all_budgets(model: ConfigDoc) -> list[tuple[str, str, list[BudgetDoc]]]:
    found = [("tenant", ROOT_SCOPE, model.tenant.budgets)]
    found += [(f"scopes.{path}", path, (scope.budgets if scope else [])) for path, scope in model.scopes.items()]
    found += [(f"agents.{name}", agent_scope(agent.scope, name), agent.budgets) for name, agent in model.agents.items()]
    return found


def _check_budget(
    model: ConfigDoc, where: str, scope: str, budget: BudgetDoc, *, seen: dict[str, str], problem: Any
) -> None:
    meter = model.meters.get(budget.meter)
    if meter is None:
        problem(f"{where}.meter", f"meter {budget.meter!r} is not declared under meters")
        return
    try:
        window = parse_window(budget.window)
    except ValueError as error:
        problem(f"{where}.window", str(error))
        return
    if meter.kind == "distinct" and window.kind is WindowKind.ROLLING:
        problem(f"{where}.window", "a distinct meter needs a calendar or total window, not a rolling one")
    for field_name in ("limit", "per_action_max"):
        value = getattr(budget, field_name)
        if value is None:
            continue
        try:
            parse_exact_amount(value, meter.scale, field=field_name, maximum=LIMIT_BASE_UNITS_MAX)
        except InvalidRequest as error:
            problem(f"{where}.{field_name}", error.message.split(": ", 1)[-1])
    budget_id = budget.id or default_budget_id(scope, budget.meter, window, budget.actions, budget.per == "task")
    if budget_id in seen:
        problem(f"{where}", f"budget {budget_id!r} is defined twice (also at {seen[budget_id]}); give one an id")
    seen[budget_id] = where


def build_tenant(tenant_id: str, document: Mapping[str, Any], version: int, *, timezone: str = "UTC") -> TenantConfig:
    """Turn a validated (stored) document into the engine's TenantConfig."""
    model = ConfigDoc.model_validate(dict(document))
    meters = {name: Meter(name, MeterKind(meter.kind), meter.scale) for name, meter in model.meters.items()}
    scopes = {path: Scope(path, scope.owner if scope else None) for path, scope in model.scopes.items()}
    agents = {
        name: Agent(name, agent.scope, Priority(agent.priority), agent.owner) for name, agent in model.agents.items()
    }
    budgets = []
    for _, scope, docs in _all_budgets(model):
        for doc in docs:
            meter = meters[doc.meter]
            window = parse_window(doc.window)
            is_per_task = doc.per == "task"
            budgets.append(
                Budget(
                    id=doc.id or default_budget_id(scope, doc.meter, window, doc.actions, is_per_task),
                    scope=scope,
                    meter=meter,
                    limit=parse_exact_amount(doc.limit, meter.scale, field="limit", maximum=LIMIT_BASE_UNITS_MAX),
                    window=window,
                    per_action_max=None
                    if doc.per_action_max is None
                    else parse_exact_amount(
                        doc.per_action_max, meter.scale, field="per_action_max", maximum=LIMIT_BASE_UNITS_MAX
                    ),
                    actions=doc.actions,
                    mode=Mode(doc.mode),
                    is_per_task=is_per_task,
                )
            )
    return TenantConfig(
        tenant_id, ZoneInfo(model.tenant.timezone or timezone), meters, scopes, budgets, agents, version
    )
