"""API keys and config diffs, without a database.

Keys: the format round-trips, only the hash is kept, a wrong or malformed secret is refused.
Diffs: computed on built configs, so equivalent spellings are no change, and each kind of
change (add / change / remove of meters, scopes, agents, budgets, the time zone) is reported
once, in a stable order.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from remit.changes import diff_configs
from remit.config import build_tenant, parse_document
from remit.errors import Forbidden, Unauthorized
from remit.keys import Principal, Role, display_prefix, hash_secret, new_key, parse_key, secret_matches

BASE: dict[str, Any] = {
    "tenant": {"timezone": "UTC"},
    "meters": {"usd": {"kind": "sum", "scale": 2}, "accounts": {"kind": "distinct"}},
    "scopes": {"sales": {"owner": "jane", "budgets": [{"meter": "usd", "limit": "50", "window": "day"}]}},
    "agents": {"bot": {"scope": "sales"}},
}


def built(document: dict[str, Any], version: int = 1) -> Any:
    return build_tenant("t", parse_document(document).document, version)


def test_a_key_round_trips_and_only_its_hash_matches() -> None:
    key = new_key()
    key_id, secret = parse_key(key.text)
    assert (key_id, secret) == (key.key_id, key.secret)
    assert key.secret_sha256 == hash_secret(secret) and secret not in key.secret_sha256
    assert secret_matches(secret, key.secret_sha256)
    assert not secret_matches(secret[:-1] + ("A" if secret[-1] != "A" else "B"), key.secret_sha256)
    assert display_prefix(key_id).startswith(f"rk_{key_id}") and secret not in display_prefix(key_id)


def test_a_rotation_keeps_the_id_and_changes_the_secret() -> None:
    first = new_key()
    rotated = new_key(first.key_id)
    assert rotated.key_id == first.key_id and rotated.secret != first.secret


@pytest.mark.parametrize("text", ["", "rk_", "rk_zz_secret", "Bearer x", "rk_0123456789abcdef_short", "x" * 500])
def test_malformed_keys_are_unauthorized(text: str) -> None:
    with pytest.raises(Unauthorized):
        parse_key(text)


def test_agent_principals_are_not_admins() -> None:
    Principal("t", "k", Role.ADMIN).require_admin()
    with pytest.raises(Forbidden):
        Principal("t", "k", Role.AGENT, "bot").require_admin()


def test_the_same_config_spelled_differently_is_no_change() -> None:
    respelled = copy.deepcopy(BASE)
    respelled["scopes"]["sales"]["budgets"][0]["limit"] = "50.00"
    respelled["scopes"]["sales"]["budgets"][0]["id"] = "sales:usd:day"
    assert diff_configs(built(BASE), built(respelled)) == []


def test_every_kind_of_change_is_listed_once_in_order() -> None:
    after = copy.deepcopy(BASE)
    after["tenant"]["timezone"] = "Europe/Paris"
    after["meters"]["tokens"] = {"kind": "sum"}
    after["scopes"]["sales"]["budgets"][0]["limit"] = "75"
    after["scopes"]["support"] = {"budgets": [{"meter": "tokens", "limit": "10", "window": "hour"}]}
    del after["agents"]["bot"]
    changes = diff_configs(built(BASE), built(after))
    assert [(c["op"], c["kind"], c["name"]) for c in changes] == [
        ("change", "tenant", "settings"),
        ("add", "meter", "tokens"),
        ("add", "scope", "support"),
        ("remove", "agent", "bot"),
        ("change", "budget", "sales:usd:day"),
        ("add", "budget", "support:tokens:hour"),
    ]
    limit_change = changes[4]
    assert limit_change["before"]["limit"] == "50.00" and limit_change["after"]["limit"] == "75.00"
    assert changes[3]["after"] is None and changes[1]["before"] is None


def test_a_tenant_never_configured_gets_everything_added() -> None:
    changes = diff_configs(built({}, version=0), built(BASE))
    assert {c["op"] for c in changes} == {"add"}
    assert ("budget", "sales:usd:day") in {(c["kind"], c["name"]) for c in changes}
