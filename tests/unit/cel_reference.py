"""The reference the fast paths are checked against: cel-python itself."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tether.projections.cel_expressions import ExpressionEvaluationError, compile_program

compile_program("true")  # builds cel-python's environment (it raises the recursion limit)


def cel_true(source: str, payload: Mapping[str, Any]) -> bool:
    """cel-python's answer, with any evaluation error counted as False (a non-match)."""
    try:
        return compile_program(source).matches(payload)
    except ExpressionEvaluationError:
        return False
