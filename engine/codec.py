"""JSON on the wire: orjson everywhere, with one place that turns values into JSON and one
place that checks what comes in from outside (pushed events, HTTP bodies)."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from pydantic import BaseModel

# Nesting allowed in an event payload or its metadata. orjson refuses to encode values
# nested past 254 levels, so a deeper payload could be stored but never passed on to the
# run; a bound far below that, checked where input enters, refuses it up front.
MAX_JSON_DEPTH = 64
# A pushed event's metadata (who decided, from where) travels in this header; it is a small
# annotation, not a second payload.
METADATA_HEADER = "Tether-Metadata"
MAX_METADATA_BYTES = 4096
MAX_METADATA_DEPTH = 8
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# orjson reads an integer beyond 64 bits as a float without a word; only a literal this
# long can be one, so the exact (slower) parse runs only when one appears.
_LONG_INTEGER = re.compile(rb"\d{19,}")


class EncodingError(TypeError):
    """A value could not be turned into JSON."""


class InvalidJsonError(ValueError):
    """Input that is not usable JSON: malformed, too deep, or with out-of-range integers."""


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> bytes:
    """Encode ``value``; pydantic models are dumped in JSON mode."""
    try:
        return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        raise EncodingError(
            f"cannot encode value as JSON ({exc}); return dicts, lists, strings, numbers, "
            "booleans, None or pydantic models from steps and tasks"
        ) from exc


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def to_json_value(value: Any) -> Any:
    """Round-trip through JSON so a first run sees exactly what a replay will see."""
    return orjson.loads(dumps(value))


def check_json_value(value: Any, what: str, *, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise :class:`InvalidJsonError` if ``value`` nests deeper than ``max_depth`` or holds
    an integer outside 64 bits (neither survives the trip through the engine intact)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise InvalidJsonError(
                    f"{what} is nested more than {max_depth} levels deep; flatten it"
                )
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif (
            isinstance(item, int)
            and not isinstance(item, bool)
            and not INT64_MIN <= item <= INT64_MAX
        ):
            raise InvalidJsonError(
                f"{what} holds the integer {str(item)[:30]}, outside the 64-bit range "
                f"[{INT64_MIN}, {INT64_MAX}]; send it as a string"
            )


def _exact_int(literal: str) -> int:
    value = int(literal)
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidJsonError(
            f"the integer {literal[:30]} is outside the 64-bit range "
            f"[{INT64_MIN}, {INT64_MAX}]; send it as a string"
        )
    return value


def loads_object(data: bytes, what: str, *, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """Decode input from outside that must be a JSON object, checked as
    :func:`check_json_value` does; raises :class:`InvalidJsonError` saying what is wrong."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidJsonError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidJsonError(f"{what} must be a JSON object, got {type(value).__name__}")
    if _LONG_INTEGER.search(data):
        try:  # the exact parse catches integers orjson turned into floats
            json.loads(data, parse_int=_exact_int)
        except InvalidJsonError as exc:
            raise InvalidJsonError(f"{what}: {exc}") from None
    check_json_value(value, what, max_depth=max_depth)
    return value
