"""What crosses between a worker process and its node's engine host survives the trip whole.

How: operations, decisions, every kind of result and Remit's errors are packed, framed,
pickled and read back as `remit.relay` does; each must come back equal (errors: same class,
code, message, field and details). A stream that ends between frames reads as closed, one that
ends inside a frame or announces an absurd length is an error, never a half-read payload.
"""

from __future__ import annotations

import asyncio
import pickle
import struct

import pytest

from remit.domain.decisions import BudgetReport, Decision, Outcome, Priority, Reason, ReasonCode
from remit.domain.tenant import Agent
from remit.errors import (
    ConfigError,
    Conflict,
    InvalidRequest,
    NotFound,
    Overloaded,
    RemitError,
    Unavailable,
)
from remit.limits import RELAY_FRAME_BYTES_MAX
from remit.operations import Act, Resolve
from remit.relay import encode_frame, pack_answer, pack_operation, read_frame, unpack_answer, unpack_operation
from remit.results import CommitResult, ExtendResult, ReleaseResult, UsageResult

ACT = Act(
    "t1",
    Agent("bot-7", "sales/renewals", Priority.SCHEDULED, "jane@example.com"),
    "crm.discount.apply",
    {"usd": 12000},
    {"accounts": ("acct:42", "acct:7")},
    "task-9",
    {"confidence": 0.8, "nested": {"x": [1, 2]}},
    Priority.INTERACTIVE,
    60_000_000,
    "k-1",
    "f" * 64,
    is_usage=True,
)
REPORT = BudgetReport("b1", "sales", "usd", "hour", 2, 20000, 5000, 12000, 12000, 3000, 1_767_229_200_000_000)
DECISIONS = [
    Decision(Outcome.ALLOW, [REPORT], [], "res_1", 1_767_225_660_000_000, None),
    Decision(
        Outcome.DENY,
        [REPORT, BudgetReport("b2", "/", "usd", "total", 2, 1, 0, 0, 5, 1, None, is_shadow=True)],
        [Reason(ReasonCode.BUDGET_EXHAUSTED, "b1", "only 30.00 left")],
        None,
        None,
        42,
    ),
]


def through_a_frame(payload: object) -> object:
    frame = encode_frame(payload)
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    return pickle.loads(frame[4:])


def test_an_act_comes_back_equal() -> None:
    back = unpack_operation(through_a_frame(pack_operation(ACT)))
    assert back == ACT
    assert isinstance(back, Act) and back.agent == ACT.agent


def test_other_operations_come_back_equal() -> None:
    resolve = Resolve("t1", "commit", "res_1", {"usd": 5}, "success", "k-2", 0, "bot-7")
    assert unpack_operation(through_a_frame(pack_operation(resolve))) == resolve


@pytest.mark.parametrize("decision", DECISIONS)
def test_a_decision_comes_back_equal(decision: Decision) -> None:
    assert unpack_answer(through_a_frame(pack_answer(decision))) == decision


@pytest.mark.parametrize(
    "result",
    [
        CommitResult("res_1", "committed", {"usd": 5}, {"usd": 1}, {}, is_late=True),
        ReleaseResult("res_1", "released", {"usd": 6}),
        ExtendResult("res_1", "held", 1_767_225_700_000_000),
        UsageResult([REPORT], {"usd": 3}),
        None,
    ],
)
def test_every_result_comes_back_equal(result: object) -> None:
    assert unpack_answer(through_a_frame(pack_answer(result))) == result  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "error",
    [
        InvalidRequest("amounts.usd: not a number", code="invalid_amount", field="amounts.usd"),
        Conflict("already committed", code="already_committed", details={"status": "committed"}),
        NotFound("reservation 'res_x' not found"),
        Overloaded("more than 3 requests of this tenant are waiting"),
        Unavailable("the batch could not be decided"),
        ConfigError("invalid config", [{"path": "scopes.ops", "message": "bad"}]),
    ],
)
def test_remit_errors_come_back_whole(error: RemitError) -> None:
    back = unpack_answer(through_a_frame(pack_answer(error)))
    assert type(back) is type(error)
    assert isinstance(back, RemitError)
    assert (back.code, back.message, back.details, str(back)) == (error.code, error.message, error.details, str(error))
    assert back.to_dict() == error.to_dict()
    assert getattr(back, "field", None) == getattr(error, "field", None)


def read(data: bytes, *, eof: bool = True) -> object:
    async def scenario() -> object:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        if eof:
            reader.feed_eof()
        return await read_frame(reader)

    return asyncio.run(scenario())


def test_frames_read_back_in_order_and_a_close_between_frames_is_none() -> None:
    assert read(encode_frame([1, 2]) + encode_frame("second")) == [1, 2]
    assert read(b"") is None


def test_a_stream_cut_inside_a_frame_is_an_error() -> None:
    frame = encode_frame({"x": 1})
    with pytest.raises(asyncio.IncompleteReadError):
        read(frame[:2])
    with pytest.raises(asyncio.IncompleteReadError):
        read(frame[:-1])


def test_an_absurd_length_is_a_broken_stream() -> None:
    with pytest.raises(ConnectionError, match="broken"):
        read(struct.pack(">I", RELAY_FRAME_BYTES_MAX + 1), eof=False)
