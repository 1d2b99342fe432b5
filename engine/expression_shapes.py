"""What an expression says about the payloads it accepts, read from its syntax alone.

:func:`simple_equality` recognises the common wait (``input.<field> == '<text>'``) without
the CEL parser; :func:`tree_shape` reads the top-level ``input.<path> == <literal>``
equalities from the lark parse tree cel-python produces. The wait index buckets waits on
one of them, and when the whole expression is just such a conjunction (``fully_indexed``)
the matcher can decide it with :func:`equalities_hold` and skip CEL entirely.

:func:`equality_key` is the single definition of "CEL-equal" shared by
:func:`equalities_hold` and the wait index, so the index can never split values that
cel-python 0.5.0 would call equal. Measured behaviour of cel-python 0.5.0 for ``==``:

* int vs double never compare (``1 == 1.0`` is an error, i.e. never true); doubles
  compare as IEEE floats (``0.0 == -0.0``; NaN equals nothing).
* bool vs int is lopsided: ``input.x == 1`` is true for ``x: true`` and
  ``true == input.x`` is true for ``x: 1``, but ``1 == input.x`` and
  ``input.x == true`` are errors in those cases. Keys therefore merge bool with int
  (a superset), and only the orientations where that is exact are ``fully_indexed``.
* ``null`` equals only null; a string never equals a non-string.
* A missing field, or selecting a field of a non-map, is an error.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import celpy.celtypes
import lark
from celpy.evaluation import celstr

__all__ = [
    "Equality",
    "ExpressionShape",
    "JsonScalar",
    "equalities_hold",
    "equality_key",
    "lookup_path",
    "simple_equality",
    "tree_shape",
]

JsonScalar = str | int | float | bool | None

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
# Single-child grammar wrappers the analyser looks straight through.
_WRAPPERS = frozenset(
    {"expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication"}
    | {"unary", "member", "primary"}
)
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Equality:
    """``input.<path> == <value>`` (either side), found in the top-level conjunction."""

    path: tuple[str, ...]
    value: JsonScalar


@dataclass(frozen=True, slots=True)
class ExpressionShape:
    """What the index and matcher need to know about an expression, from its syntax alone."""

    source: str
    equalities: tuple[Equality, ...]
    fully_indexed: bool


# The common wait, ``input.<field> == '<plain text>'``, recognised without the CEL parser: a
# lark parse costs about 0.1 ms, paid per wait by the worker (validate) and by the matcher
# (analyze). Only a plain field name that is no CEL reserved word and a single-quoted literal
# without escapes, quotes or control characters qualify, so the shape is exactly the one the
# full analysis finds; anything else takes the full path.
_SIMPLE_EQUALITY = re.compile(
    r"[ \t\n\r\f]*input\.([_a-zA-Z][_a-zA-Z0-9]*)[ \t\n\r\f]*==[ \t\n\r\f]*"
    r"'([^'\\\x00-\x1f\x7f]*)'[ \t\n\r\f]*"
)
# CEL's reserved words: a field with one of these names is left to the full parser.
_RESERVED = frozenset(
    [
        "as",
        "break",
        "const",
        "continue",
        "else",
        "false",
        "for",
        "function",
        "if",
        "import",
        "in",
        "let",
        "loop",
        "namespace",
        "null",
        "package",
        "return",
        "true",
        "var",
        "void",
        "while",
    ]
)


def simple_equality(source: str) -> ExpressionShape | None:
    """The shape of ``input.<field> == '<plain text>'``, or None for any other expression."""
    match = _SIMPLE_EQUALITY.fullmatch(source)
    if match is None or match.group(1) in _RESERVED:
        return None
    return ExpressionShape(source, (Equality((match.group(1),), match.group(2)),), True)


# --- the parse tree -------------------------------------------------------------------


def tree_shape(source: str, tree: lark.Tree[Any]) -> ExpressionShape:
    """The shape of ``source`` from its parse tree: its top-level equalities."""
    equalities: list[Equality] = []
    fully_indexed = True
    for conjunct in _conjuncts(tree):
        found = _equality(conjunct)
        if found is None:
            fully_indexed = False
            continue
        equality, exact = found
        equalities.append(equality)
        fully_indexed = fully_indexed and exact
    return ExpressionShape(source, tuple(equalities), fully_indexed)


def _unwrap(node: object) -> object:
    """Skip single-child wrappers and parentheses, which do not change meaning."""
    while isinstance(node, lark.Tree):
        if (node.data in _WRAPPERS and len(node.children) == 1) or node.data == "paren_expr":
            node = node.children[0]
        else:
            break
    return node


def _conjuncts(tree: object) -> list[object]:
    """The operands of the top-level ``&&`` chain, parentheses flattened, left to right."""
    out: list[object] = []
    stack = [tree]
    while stack:
        node = _unwrap(stack.pop())
        if isinstance(node, lark.Tree) and node.data == "conditionaland":
            stack.extend(reversed(node.children))  # two children: left && right
        else:
            out.append(node)
    return out


def _equality(node: object) -> tuple[Equality, bool] | None:
    """Recognise ``input.path == literal`` (either order); also say if it is exact.

    "Exact" means :func:`equality_key` agrees with cel-python for this orientation:
    bool and int share keys, which cel-python honours only for ``input.x == <int>`` and
    ``<bool> == input.x``. Unsigned literals keep an int value and are never exact.
    """
    if not (isinstance(node, lark.Tree) and node.data == "relation" and len(node.children) == 2):
        return None
    op, right = node.children
    if not (isinstance(op, lark.Tree) and op.data == "relation_eq"):
        return None
    left = op.children[0]
    path, literal, path_left = _path(left), _literal(right), True
    if path is None or literal is None:
        path, literal, path_left = _path(right), _literal(left), False
    if path is None or literal is None:
        return None
    kind, value = literal
    if kind == "UINT_LIT":
        exact = False
    elif kind == "BOOL_LIT":
        exact = not path_left
    elif kind == "INT_LIT":
        exact = path_left or value not in (0, 1)
    else:
        exact = True
    return Equality(path, value), exact


def _path(node: object) -> tuple[str, ...] | None:
    """``input.a.b`` / ``input["a"]`` -> ``("a", "b")``; anything else -> None."""
    segments: list[str] = []
    node = _unwrap(node)
    while isinstance(node, lark.Tree):
        if node.data == "member_dot":
            segments.append(sys.intern(str(node.children[1])))  # shared across waits
        elif node.data == "member_index":
            literal = _literal(node.children[1])
            if literal is None or not isinstance(literal[1], str):
                return None
            segments.append(sys.intern(literal[1]))
        elif node.data == "ident":
            if str(node.children[0]) != "input" or not segments:
                return None
            return tuple(reversed(segments))
        else:
            return None
        node = _unwrap(node.children[0])
    return None


def _literal(node: object) -> tuple[str, JsonScalar] | None:
    """Decode a literal exactly as cel-python does; None for non-literals and bytes."""
    node = _unwrap(node)
    if not (isinstance(node, lark.Tree) and node.data == "literal" and node.children):
        return None
    token = node.children[0]
    if not isinstance(token, lark.Token):
        return None
    kind, text = token.type, str(token.value)
    value: JsonScalar
    try:
        if kind == "INT_LIT":
            value = int(celpy.celtypes.IntType(text))
        elif kind == "UINT_LIT":
            value = int(celpy.celtypes.UintType(text[:-1]))
        elif kind == "FLOAT_LIT":
            value = float(celpy.celtypes.DoubleType(text))
        elif kind in ("STRING_LIT", "MLSTRING_LIT"):
            value = str(celstr(token))
        elif kind == "BOOL_LIT":
            value = text == "true"
        elif kind == "NULL_LIT":
            value = None
        else:
            return None
    except (ValueError, TypeError):  # e.g. int overflow: CEL yields an error value
        return None
    return kind, value


# --- matching without CEL ---------------------------------------------------------------


def equality_key(value: object) -> Hashable | None:
    """Hashable key that is equal for two JSON values exactly when CEL may call them equal.

    Returns ``(tag, value)`` so Python's ``True == 1 == 1.0`` cannot merge buckets wrongly;
    bool shares the int tag (see module docs). None means "equals nothing": NaN, ints
    outside int64 (cel-python rejects them), lists, maps and anything non-JSON.
    """
    if value is None:
        return ("n", None)
    if isinstance(value, bool):
        return ("i", int(value))
    if isinstance(value, float):
        if value != value:
            return None
        return ("d", float(value) + 0.0)  # -0.0 -> 0.0
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            return None
        return ("i", int(value))
    if isinstance(value, str):
        return ("s", str(value))
    return None


def lookup_path(payload: Mapping[str, Any], path: tuple[str, ...]) -> object:
    """Value at ``path``, or a private sentinel when CEL selection would fail."""
    current: object = payload
    for segment in path:
        if not isinstance(current, Mapping):
            return _MISSING
        current = current.get(segment, _MISSING)
        if current is _MISSING:
            return _MISSING
    return current


def equalities_hold(shape: ExpressionShape, payload: Mapping[str, Any]) -> bool:
    """True iff every equality holds; equals the CEL result when ``shape.fully_indexed``.

    For any shape, a true CEL result implies True here, so it is a safe pre-filter.
    """
    for equality in shape.equalities:
        key = equality_key(lookup_path(payload, equality.path))
        if key is None or key != equality_key(equality.value):
            return False
    return True
