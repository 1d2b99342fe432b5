"""What the CEL fast-path tests share: cel-python itself as the reference answer, and a
way to build the payloads they evaluate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tether.engine.expressions import ExpressionEvaluationError, compile_program

compile_program("true")  # builds cel-python's environment (it raises the recursion limit)


def cel_true(source: str, payload: Mapping[str, Any]) -> bool:
    """cel-python's answer, with any evaluation error counted as False (a non-match)."""
    try:
        return compile_program(source).matches(payload)
    except ExpressionEvaluationError:
        return False


def set_path(payload: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Put ``value`` at ``path`` in ``payload``, replacing whatever is not a map on the way."""
    for segment in path[:-1]:
        child = payload.get(segment)
        if not isinstance(child, dict):
            child = payload[segment] = {}
        payload = child
    payload[path[-1]] = value
