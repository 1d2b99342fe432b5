"""CEL wait conditions: parse, validate, compile, analyse for indexing, and evaluate
against event payloads.

A wait may carry a CEL expression over the pushed event payload, visible to CEL as
``input``. Evaluating CEL for every open wait on every event does not scale, so
:func:`analyze` returns the expression's shape (see ``tether.engine.expression_shapes``):
its top-level ``input.<path> == <literal>`` equalities, which the wait index and the
matcher use to skip CEL where they can.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import celpy
import celpy.celtypes
import lark
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

from tether.engine.expression_shapes import ExpressionShape, simple_equality, tree_shape

__all__ = [
    "CompiledProgram",
    "ExpressionEvaluationError",
    "InvalidExpressionError",
    "analyze",
    "compile_program",
    "satisfies",
    "validate",
]

_HINT = (
    "check the CEL syntax; the payload is available as `input` "
    "(for example: input.runId == 'abc' && input.approved == true)"
)


class InvalidExpressionError(ValueError):
    """The expression does not parse or cannot be turned into a CEL program."""


class ExpressionEvaluationError(Exception):
    """CEL raised at run time (missing field, wrong types, ...) or gave a non-bool."""


class CompiledProgram:
    """A cel-python program bound to its source; cached by :func:`compile_program`."""

    __slots__ = ("_runner", "source")

    def __init__(self, source: str, runner: celpy.Runner | None) -> None:
        self.source = source
        self._runner = runner  # None: empty expression, always true

    def __repr__(self) -> str:
        return f"CompiledProgram({_show(self.source)})"

    def matches(self, payload: Mapping[str, Any]) -> bool:
        """Evaluate with ``input = payload``; errors and non-bool results raise."""
        return self.matches_with({"input": dict(payload)})

    def matches_with(self, variables: Mapping[str, Any]) -> bool:
        """Evaluate with the given JSON ``variables`` (``input``, or a workflow task's
        ``output`` and ``run``); errors and non-bool results raise."""
        if self._runner is None:
            return True
        try:
            activation = {name: json_to_cel(value) for name, value in variables.items()}
        except (TypeError, ValueError) as exc:
            raise ExpressionEvaluationError(
                f"payload cannot be given to CEL expression {_show(self.source)}: {exc} "
                "(payloads must be JSON; integers must fit in 64 bits)"
            ) from exc
        try:
            result: object = self._runner.evaluate(activation)
        except Exception as exc:  # cel-python raises CELEvalError and plain errors alike
            raise _evaluation_error(self.source, exc) from exc
        if isinstance(result, CELEvalError):
            raise _evaluation_error(self.source, result)
        if isinstance(result, bool | celpy.celtypes.BoolType):
            return bool(result)
        raise ExpressionEvaluationError(
            f"CEL expression {_show(self.source)} must evaluate to a bool, got "
            f"{_cel_type_name(result)} {_plain(result)}; compare the value, e.g. `input.x == 'v'`"
        )


def _evaluation_error(source: str, exc: BaseException) -> ExpressionEvaluationError:
    """Turn a cel-python failure into a short message (its own can dump the whole context)."""
    detail = str(exc.args[0]) if exc.args else type(exc).__name__
    detail = detail.split(" (in activation", 1)[0].splitlines()[0] if detail else detail
    if len(detail) > 300:
        detail = detail[:300] + "..."
    return ExpressionEvaluationError(
        f"CEL expression {_show(source)} failed on this payload: {detail}"
    )


def _show(source: str) -> str:
    """Quote an expression for a message, cut short so huge expressions stay readable."""
    text = repr(source)
    return text if len(text) <= 200 else text[:200] + "...(truncated)"


def _plain(value: object) -> str:
    """Show a CEL value as plain Python (``3``, not ``IntType(3)``), truncated."""
    for base in (bool, int, float, str):
        if isinstance(value, base):
            value = base(value)
            break
    text = repr(value)
    return text if len(text) <= 100 else text[:100] + "..."


def _cel_type_name(value: object) -> str:
    if value is None:
        return "null"
    name = type(value).__name__
    return name[:-4].lower() if name.endswith("Type") else name


@functools.cache
def _env() -> celpy.Environment:
    """One shared environment; created lazily because it builds the lark parser."""
    return celpy.Environment()


# Bounds on an expression, checked before and after parsing. A wait condition is a short
# test over a payload; without bounds a 100 KB expression took seconds to parse (in the
# worker and again in the matcher's callback, stalling every other approval), and one
# nested deeper than cel-python's recursive evaluator can go could never match at all.
MAX_EXPRESSION_LENGTH = 2048
MAX_EXPRESSION_DEPTH = 200  # of the parse tree; 60 nested parentheses already reach 600


def _check_length(source: str) -> None:
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise InvalidExpressionError(
            f"invalid CEL expression {_show(source)}: {len(source)} characters, over the limit "
            f"of {MAX_EXPRESSION_LENGTH}; match on a few fields and keep data in the payload"
        )


def _tree_depth(tree: lark.Tree[Any]) -> int:
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, lark.Tree):
            stack.extend((child, depth + 1) for child in node.children)
    return deepest


def _parse(source: str) -> lark.Tree[Any]:
    _check_length(source)
    try:
        tree: lark.Tree[Any] = _env().compile(source)
    except CELParseError as exc:
        context = str(exc.args[0]).rstrip("\n") if exc.args else ""
        where = f" at line {exc.line}, column {exc.column}" if exc.line is not None else ""
        raise InvalidExpressionError(
            f"invalid CEL expression {_show(source)}: syntax error{where}:\n{context}\n{_HINT}"
        ) from exc
    except RecursionError as exc:
        raise InvalidExpressionError(
            f"invalid CEL expression {_show(source)}: nested too deeply; {_HINT}"
        ) from exc
    if _tree_depth(tree) > MAX_EXPRESSION_DEPTH:
        raise InvalidExpressionError(
            f"invalid CEL expression {_show(source)}: nested too deeply to evaluate (parse "
            f"tree deeper than {MAX_EXPRESSION_DEPTH}); use fewer nested parentheses, "
            "operators or terms"
        )
    return tree


def _is_empty(source: str | None) -> bool:
    return source is None or not source.strip()


def validate(source: str | None) -> None:
    """Raise :class:`InvalidExpressionError` unless ``source`` parses and builds a program.

    cel-python resolves names only at evaluation time, so a reference to a variable
    other than ``input`` cannot be detected here; it fails at match time instead.
    """
    if source is not None and source.strip():
        _check_length(source)
        if simple_equality(source) is None:
            compile_program(source)


@functools.lru_cache(maxsize=1024)
def compile_program(source: str) -> CompiledProgram:
    """Parse and build a program once per distinct source (matchers reuse expressions)."""
    if _is_empty(source):
        return CompiledProgram(source, None)
    tree = _parse(source)
    try:
        runner = _env().program(tree)
    except Exception as exc:  # any failure here means the expression is unusable
        raise InvalidExpressionError(
            f"invalid CEL expression {_show(source)}: cannot build a program: {exc}; {_HINT}"
        ) from exc
    return CompiledProgram(source, runner)


# --- analysis -------------------------------------------------------------------------


def analyze(source: str | None) -> ExpressionShape:
    """Extract the top-level equalities; raises :class:`InvalidExpressionError`."""
    if source is None or _is_empty(source):
        return ExpressionShape(source or "", (), True)
    _check_length(source)
    simple = simple_equality(source)
    if simple is not None:
        return simple
    return tree_shape(source, _parse(source))


def satisfies(expression: str | None, payload: Mapping[str, Any]) -> bool:
    """Whether ``payload`` makes ``expression`` true; no expression means any payload, and
    an expression that cannot be evaluated on it (or at all) is a non-match."""
    if not expression or not expression.strip():
        return True
    try:
        return compile_program(expression).matches(payload)
    except (ExpressionEvaluationError, InvalidExpressionError):
        return False
