"""What the API and the page share: JitError → HTTP status, input parsing, exposure."""

from __future__ import annotations

import inspect
import logging
from typing import Any, Callable

log = logging.getLogger("pgveil.web")

try:  # the JIT service is built alongside; until it lands, errors are recognised by shape
    from proxy.jit.service import JitError as _RealJitError  # type: ignore
except Exception:  # pragma: no cover - depends on what is installed
    _RealJitError = None  # type: ignore[assignment]

#: JitError.code → HTTP status. Unknown codes are client errors (400).
JIT_STATUS = {
    "not_found": 404,
    "not_pending": 409,
    "self_approval": 403,
    "not_approver": 403,
    "too_long": 400,
    "store_unavailable": 503,
    # further codes the service uses
    "forbidden": 403,
    "already_approved": 409,
    "not_active": 409,
    "conflict": 409,
    "bad_duration": 400,
    "bad_request": 400,
}

REQUEST_STATES = ("pending", "approved", "denied", "cancelled", "expired")


class InputError(ValueError):
    """A bad field in a request body or form; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        if f"'{field}'" not in message:
            message = f"field '{field}': {message}"
        super().__init__(message)
        self.field = field
        self.message = message


def is_jit_error(exc: BaseException) -> bool:
    if _RealJitError is not None and isinstance(exc, _RealJitError):
        return True
    return type(exc).__name__ == "JitError" and isinstance(getattr(exc, "code", None), str)


def jit_error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    code = getattr(exc, "code", "error")
    message = getattr(exc, "message", None) or str(exc)
    hint = getattr(exc, "hint", None)
    return JIT_STATUS.get(code, 400), {"error": code, "message": message, "hint": hint}


def parse_columns(value: Any, field: str = "columns") -> tuple[str, ...]:
    """A list of column names, or one comma-separated string."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        items = [c.strip() for c in value.split(",")]
    elif isinstance(value, (list, tuple)) and all(isinstance(c, str) for c in value):
        items = [c.strip() for c in value]
    else:
        raise InputError(field, "expected a list of column names or a comma-separated string")
    if any(not c for c in items):
        raise InputError(field, "empty column name")
    return tuple(items)


def parse_duration(value: Any, field: str = "duration") -> str | int | float | None:
    """Seconds (a number) or a text interval such as '30 minutes'; the service validates it."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InputError(field, "expected seconds or an interval such as '30 minutes'")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise InputError(field, "must be positive")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        return text
    raise InputError(field, "expected seconds or an interval such as '30 minutes'")


def parse_max_uses(value: Any, field: str = "max_uses") -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(field, "expected a positive integer")
    return value


def require_text(body: dict[str, Any], field: str, *, max_len: int = 2000) -> str:
    value = body.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(field, f"missing field '{field}'")
    if not isinstance(value, str):
        raise InputError(field, f"field '{field}' must be a string")
    if len(value) > max_len:
        raise InputError(field, f"field '{field}' is longer than {max_len} characters")
    return value.strip()


def optional_text(body: dict[str, Any], field: str, *, max_len: int = 2000) -> str | None:
    value = body.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InputError(field, f"field '{field}' must be a string")
    if len(value) > max_len:
        raise InputError(field, f"field '{field}' is longer than {max_len} characters")
    return value.strip() or None


async def estimate_exposure(exposure: Callable[[str], Any] | None, table: str | None) -> int | None:
    """Estimated rows of ``table`` (sync or async callable); None when unknown or failing."""
    if exposure is None or not table:
        return None
    try:
        value = exposure(table)
        if inspect.isawaitable(value):
            value = await value
    except Exception:  # an estimate must never break the page
        log.debug("exposure(%r) failed", table, exc_info=True)
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return int(value)


def to_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return dict(obj)
    return obj.to_dict()
