"""JSON on the wire: orjson everywhere, with one place that turns values into JSON."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel


class EncodingError(TypeError):
    """A value could not be turned into JSON."""


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
