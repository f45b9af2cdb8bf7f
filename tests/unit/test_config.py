"""Config as code: the example loads and builds, and every mistake is reported where it is.

How: examples/remit.yaml is loaded with `load_file`, validated with `parse_document` and
built with `build_tenant`, and the resulting budgets are checked against the file. Then the
small document from tests/conftest.py `config()` is broken one way at a time; each must raise
ConfigError whose message starts with the source name and whose `errors` list names the exact
path of the problem. YAML syntax errors are written to a temporary file, since the message
must name the file and the line.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLE_CONFIG, config
from remit.config import build_tenant, load_file, parse_document
from remit.domain.amounts import MeterKind
from remit.domain.budgets import Mode
from remit.domain.windows import WindowKind
from remit.errors import ConfigError

SOURCE = "team/remit.yaml"


def problems_of(document: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_document(document, source=SOURCE)
    error = caught.value
    assert error.code == "invalid_config"
    assert error.message.startswith(f"{SOURCE}: ")
    assert error.errors, "a ConfigError lists at least one problem"
    for problem in error.errors:
        assert set(problem) == {"path", "message"}
        assert problem["message"]
    assert error.details == {"errors": error.errors}
    return error


def paths_of(document: dict[str, Any]) -> list[str]:
    return [problem["path"] for problem in problems_of(document).errors]


def with_budget(budget: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return config(scopes={"ops": {"budgets": [budget]}}, **extra)


# -- the example --------------------------------------------------------------------------------


def test_example_loads_and_builds() -> None:
    document = load_file(EXAMPLE_CONFIG)
    parsed = parse_document(document, source=str(EXAMPLE_CONFIG))
    assert parsed.timezone == "America/New_York"
    tenant = build_tenant("t1", parsed.document, version=3)
    assert tenant.tenant_id == "t1"
    assert tenant.version == 3
    assert tenant.timezone.key == "America/New_York"
    assert set(tenant.meters) == {"usd", "tokens", "sends", "accounts"}
    assert tenant.meters["usd"].scale == 2
    assert tenant.meters["accounts"].kind is MeterKind.DISTINCT
    assert set(tenant.agents) == {"bot-7", "bot-8", "helper-1"}
    assert tenant.agents["bot-7"].own_scope == "sales/renewals/agent:bot-7"
    # Every budget of the file, once, on its scope (tenant budgets on the root "/").
    assert len(tenant.budgets) == 9
    assert len({b.id for b in tenant.budgets}) == 9
    by_scope = {(b.scope, b.meter.name, b.window_label) for b in tenant.budgets}
    assert ("/", "usd", "month") in by_scope
    assert ("sales/renewals/agent:bot-7", "usd", "day") in by_scope
    assert ("sales/renewals", "sends", "rolling:1h") in by_scope
    crm = next(b for b in tenant.budgets if b.actions == "crm.*")
    assert (crm.limit, crm.per_action_max, crm.window.kind) == (60000, 15000, WindowKind.HOUR)
    shadow = [b for b in tenant.budgets if b.mode is Mode.SHADOW]
    assert [(b.scope, b.limit) for b in shadow] == [("support", 5000)]
    per_task = [b for b in tenant.budgets if b.is_per_task]
    assert [(b.scope, b.window.kind, b.limit) for b in per_task] == [("support", WindowKind.TOTAL, 200000)]


def test_defaults_are_filled_in_the_stored_document() -> None:
    parsed = parse_document(config(), source=SOURCE)
    budget = parsed.document["scopes"]["ops"]["budgets"][0]
    assert budget["mode"] == "enforce"
    assert budget["actions"] == "*"
    assert budget["per"] == "scope"
    assert parsed.document["agents"]["a1"]["priority"] == "scheduled"
    # Validating the stored form again changes nothing (re-applying a config is a no-op).
    assert parse_document(parsed.document, source=SOURCE).document == parsed.document


def test_the_conftest_document_is_valid() -> None:
    tenant = build_tenant("t", parse_document(config()).document, version=1)
    assert [b.id for b in tenant.budgets] == ["ops:usd:day"]


def test_empty_document_is_an_empty_config() -> None:
    parsed = parse_document({}, source=SOURCE)
    assert parsed.timezone is None  # left out: the tenant keeps the zone it was created with
    tenant = build_tenant("t", parsed.document, version=1, timezone="Europe/Paris")
    assert tenant.budgets == []
    assert tenant.timezone.key == "Europe/Paris"


# -- each mistake, with its path ------------------------------------------------------------------


def test_unknown_meter_in_a_budget() -> None:
    error = problems_of(with_budget({"meter": "eur", "limit": "1", "window": "day"}))
    assert error.errors == [
        {"path": "scopes.ops.budgets[0].meter", "message": "meter 'eur' is not declared under meters"}
    ]
    assert error.message == f"{SOURCE}: scopes.ops.budgets[0].meter: meter 'eur' is not declared under meters"


def test_bad_window() -> None:
    error = problems_of(with_budget({"meter": "usd", "limit": "1", "window": "hourly"}))
    assert [p["path"] for p in error.errors] == ["scopes.ops.budgets[0].window"]
    assert "unknown window 'hourly'" in error.errors[0]["message"]


def test_bad_rolling_window() -> None:
    error = problems_of(with_budget({"meter": "usd", "limit": "1", "window": "rolling:90s"}))
    assert [p["path"] for p in error.errors] == ["scopes.ops.budgets[0].window"]
    assert "whole number of minutes" in error.errors[0]["message"]


def test_limit_with_too_many_decimals() -> None:
    error = problems_of(with_budget({"meter": "usd", "limit": "10.005", "window": "day"}))
    assert [p["path"] for p in error.errors] == ["scopes.ops.budgets[0].limit"]
    assert "more than 2 decimal places" in error.errors[0]["message"]


def test_per_action_max_with_too_many_decimals() -> None:
    budget = {"meter": "usd", "limit": "10", "window": "day", "per_action_max": "0.001"}
    assert paths_of(with_budget(budget)) == ["scopes.ops.budgets[0].per_action_max"]


@pytest.mark.parametrize("limit", ["-5", "lots", "NaN", "1e40"])
def test_bad_limits(limit: str) -> None:
    assert paths_of(with_budget({"meter": "usd", "limit": limit, "window": "day"})) == ["scopes.ops.budgets[0].limit"]


def test_unknown_timezone() -> None:
    error = problems_of(config(tenant={"timezone": "Mars/Olympus_Mons"}))
    assert error.errors == [{"path": "tenant.timezone", "message": "unknown IANA time zone 'Mars/Olympus_Mons'"}]


def test_agent_in_an_undeclared_scope() -> None:
    error = problems_of(config(agents={"a1": {"scope": "ops"}, "stray": {"scope": "nowhere"}}))
    assert error.errors == [{"path": "agents.stray.scope", "message": "scope 'nowhere' is not declared under scopes"}]


def test_agent_on_the_root_scope_needs_no_declaration() -> None:
    tenant = build_tenant("t", parse_document(config(agents={"root-bot": {"scope": "/"}})).document, version=1)
    assert tenant.agents["root-bot"].own_scope == "agent:root-bot"


def test_duplicate_budget() -> None:
    budget = {"meter": "usd", "limit": "1", "window": "day"}
    error = problems_of(config(scopes={"ops": {"budgets": [budget, dict(budget, limit="2")]}}))
    assert [p["path"] for p in error.errors] == ["scopes.ops.budgets[1]"]
    assert "ops:usd:day" in error.errors[0]["message"]
    assert "scopes.ops.budgets[0]" in error.errors[0]["message"]


def test_duplicate_budgets_are_fine_with_distinct_ids() -> None:
    budgets = [
        {"meter": "usd", "limit": "1", "window": "day"},
        {"meter": "usd", "limit": "2", "window": "day", "id": "ops-usd-day-strict"},
    ]
    tenant = build_tenant("t", parse_document(config(scopes={"ops": {"budgets": budgets}})).document, version=1)
    assert sorted(b.id for b in tenant.budgets) == ["ops-usd-day-strict", "ops:usd:day"]


def test_distinct_meter_with_rolling_window() -> None:
    error = problems_of(with_budget({"meter": "accounts", "limit": "5", "window": "rolling:1h"}))
    assert [p["path"] for p in error.errors] == ["scopes.ops.budgets[0].window"]
    assert "distinct" in error.errors[0]["message"]


def test_distinct_meter_with_a_scale() -> None:
    document = config(meters={"usd": {"kind": "sum", "scale": 2}, "accounts": {"kind": "distinct", "scale": 2}})
    assert paths_of(document) == ["meters.accounts.scale"]


@pytest.mark.parametrize(
    ("document", "path"),
    [
        (config(colour="blue"), "colour"),
        (config(tenant={"timezone": "UTC", "tz": "UTC"}), "tenant.tz"),
        (config(meters={"usd": {"kind": "sum", "scael": 2}}), "meters.usd.scael"),
        (with_budget({"meter": "usd", "limit": "1", "window": "day", "windw": "day"}), "scopes.ops.budgets.0.windw"),
        (config(agents={"a1": {"scope": "ops", "role": "admin"}}), "agents.a1.role"),
    ],
    ids=["top", "tenant", "meter", "budget", "agent"],
)
def test_extra_unknown_key(document: dict[str, Any], path: str) -> None:
    error = problems_of(document)
    expected = path.replace(".0.", "[0].")
    assert [p["path"] for p in error.errors] == [expected]
    assert "xtra" in error.errors[0]["message"]  # pydantic: "Extra inputs are not permitted"


def test_wrong_types_and_enum_values() -> None:
    document = config(meters={"usd": {"kind": "sums", "scale": 2}, "accounts": {"kind": "distinct"}})
    assert paths_of(document) == ["meters.usd.kind"]
    assert paths_of(config(meters={"usd": {"scale": 99}})) == ["meters.usd.scale"]
    assert paths_of(with_budget({"meter": "usd", "limit": "1", "window": "day", "mode": "audit"})) == [
        "scopes.ops.budgets[0].mode"
    ]


def test_bad_names_and_scope_paths() -> None:
    assert paths_of(config(scopes={"ops": None, "ops//x": None})) == ["scopes.ops//x"]
    assert paths_of(config(agents={"a b": {"scope": "ops"}})) == ["agents.a b"]
    deep = "/".join(["s"] * 17)
    assert paths_of(config(scopes={"ops": None, deep: None})) == [f"scopes.{deep}"]


def test_every_problem_is_listed_and_the_message_counts_them() -> None:
    document = config(
        tenant={"timezone": "Nowhere/Land"},
        scopes={
            "ops": {
                "budgets": [
                    {"meter": "eur", "limit": "1", "window": "day"},
                    {"meter": "usd", "limit": "1", "window": "fortnight"},
                ]
            }
        },
        agents={"a1": {"scope": "elsewhere"}},
    )
    error = problems_of(document)
    assert [p["path"] for p in error.errors] == [
        "tenant.timezone",
        "agents.a1.scope",
        "scopes.ops.budgets[0].meter",
        "scopes.ops.budgets[1].window",
    ]
    assert error.message.startswith(f"{SOURCE}: tenant.timezone: ")
    assert error.message.endswith("(and 3 more)")


def test_errors_do_not_mutate_the_document() -> None:
    document = with_budget({"meter": "eur", "limit": "1", "window": "day"})
    before = copy.deepcopy(document)
    problems_of(document)
    assert document == before


# -- files ----------------------------------------------------------------------------------------


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("tenant:\n  timezone: UTC\nmeters:\n  usd: {kind: sum, scale: 2\nscopes: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    message = caught.value.message
    assert message.startswith(f"{path}:")
    assert "line 5" in message
    assert "not valid YAML" in message
    assert caught.value.errors and set(caught.value.errors[0]) == {"path", "message"}


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    assert caught.value.message.startswith(f"{path}: cannot read")


def test_document_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_file(path)


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing yet\n", "---\n"])
def test_a_file_with_no_config_is_refused(tmp_path: Path, text: str) -> None:
    """Applied, it would remove everything and revoke every agent key: `{}` says that on purpose."""
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"holds no config; write one \(or \{\} to remove everything\)"):
        load_file(path)
    path.write_text("{}\n")
    assert load_file(path) == {}


@pytest.mark.parametrize("text", ["meters: " + "[" * 5000 + "]" * 5000, "[" * 100_000 + "]" * 100_000])
def test_a_file_nested_too_deeply_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="nested too deeply") as caught:
        load_file(path)
    assert caught.value.message.startswith(f"{path}:")


def test_json_is_yaml(tmp_path: Path) -> None:
    import json

    path = tmp_path / "remit.json"
    path.write_text(json.dumps(config()))
    assert parse_document(load_file(path), source=str(path)).document["meters"]["usd"]["scale"] == 2


@pytest.mark.parametrize("value", [False, True, 1.5, None, [1]])
def test_a_limit_that_is_not_a_string_or_integer_is_refused_by_its_path(value: object) -> None:
    # pydantic alone would coerce `false` to 0 (a budget that denies everything) and accept floats.
    document = {
        "meters": {"u": {"kind": "sum", "scale": 1}},
        "tenant": {"budgets": [{"meter": "u", "limit": value, "window": "day"}]},
    }
    with pytest.raises(ConfigError) as raised:
        parse_document(document, source="f.yaml")
    assert raised.value.errors == [
        {"path": "tenant.budgets[0].limit", "message": 'an amount is a decimal string such as "12.50" (or an integer)'}
    ]


@pytest.mark.parametrize("scale", [False, "2", 1.0])
def test_a_meter_scale_must_be_an_integer(scale: object) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_document({"meters": {"u": {"kind": "sum", "scale": scale}}}, source="f.yaml")
    assert raised.value.errors[0]["path"] == "meters.u.scale"
