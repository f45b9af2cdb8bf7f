"""Error codes to HTTP statuses, and the one error body every failure answers with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

from remit.errors import RemitError

_STATUS_BY_CODE = {
    "invalid_json": 400,
    "invalid_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "already_committed": 409,
    "already_released": 409,
    "expired": 409,
    "idempotency_mismatch": 409,
    "config_changed": 409,
    "last_admin_key": 409,
    "conflict": 409,
    "body_too_large": 413,
    "rate_limited": 429,
    "overloaded": 503,
    "unavailable": 503,
    "internal": 500,
    "invariant_violation": 500,
}
"""Every other code (invalid_field, invalid_amount, unknown_meter, invalid_config, …) is 422:
the request was well-formed JSON but a field in it cannot be accepted."""

RETRY_AFTER_SECONDS = "1"


def status_of(code: str) -> int:
    return _STATUS_BY_CODE.get(code, 422)


def error_response(
    code: str,
    message: str,
    details: Any = None,
    *,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    status = status_of(code) if status is None else status
    body = orjson.dumps({"error": {"code": code, "message": message, "details": details}})
    headers = dict(headers or {})
    if status == 503:
        headers["retry-after"] = RETRY_AFTER_SECONDS
    if status == 429:
        headers["retry-after"] = str((details or {}).get("retry_after_seconds", RETRY_AFTER_SECONDS))
    if status == 401:
        headers["www-authenticate"] = 'Bearer realm="remit"'
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def remit_error_response(error: RemitError) -> Response:
    return error_response(error.code, error.message, error.details)
