"""CEL wait conditions: shape extraction, errors, and agreement with cel-python itself."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.cel_reference import cel_true, set_path
from tether.engine.expression_shapes import (
    Equality,
    ExpressionShape,
    JsonScalar,
    equalities_hold,
    equality_key,
)
from tether.engine.expressions import (
    ExpressionEvaluationError,
    InvalidExpressionError,
    analyze,
    compile_program,
    validate,
)

# --- shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "equalities", "fully"),
    [
        ("input.runId == 'r1'", [(("runId",), "r1")], True),
        ('"r1" == input.runId', [(("runId",), "r1")], True),
        ("input.a.b == 7", [(("a", "b"), 7)], True),
        ('input["a-b"]["c"] == -3', [(("a-b", "c"), -3)], True),
        ("input.a['b'].c == 0x10", [(("a", "b", "c"), 16)], True),
        ("input.x == 2.5", [(("x",), 2.5)], True),
        ("input.x == null", [(("x",), None)], True),
        ("null == input.x", [(("x",), None)], True),
        ("(input.x) == ('v')", [(("x",), "v")], True),
        (
            "(input.a == 1 && 'b' == input.b) && (input.c == null && (input.d == 2.0))",
            [(("a",), 1), (("b",), "b"), (("c",), None), (("d",), 2.0)],
            True,
        ),
        # bool vs int orientations where cel-python is lopsided: indexed, not exact.
        ("input.ok == true", [(("ok",), True)], False),
        ("true == input.ok", [(("ok",), True)], True),
        ("input.n == 1", [(("n",), 1)], True),
        ("1 == input.n", [(("n",), 1)], False),
        ("2 == input.n", [(("n",), 2)], True),
        ("input.n == 1u", [(("n",), 1)], False),
        # Not equalities / not top level.
        ("input.a == 1 || input.b == 2", [], False),
        ("input.a == 1 && (input.b == 2 || input.c == 3)", [(("a",), 1)], False),
        ("(input.a == 1 || input.b == 2) && input.c == 3", [(("c",), 3)], False),
        ("!(input.a == 1)", [], False),
        ("input.a != 1", [], False),
        ("input.a > 1 && input.b == 'x'", [(("b",), "x")], False),
        ("input.a == input.b", [], False),
        ("1 == 1", [], False),
        ("other.a == 1", [], False),
        ("input == null", [], False),
        ("input.a == -(1)", [], False),
        ("input.a == b'x'", [], False),
        ("input.a == 9223372036854775808", [], False),  # overflows: CEL yields an error
        ("input.a.startsWith('x')", [], False),
        ("size(input.a) == 1", [], False),
        ("input.a == 1 ? true : false", [], False),
        ("input.tags[0] == 'x'", [], False),
    ],
)
def test_shapes(
    source: str, equalities: list[tuple[tuple[str, ...], JsonScalar]], fully: bool
) -> None:
    shape = analyze(source)
    assert shape.source == source
    got = [(e.path, e.value, type(e.value)) for e in shape.equalities]
    assert got == [(p, v, type(v)) for p, v in equalities]
    assert shape.fully_indexed is fully


@pytest.mark.parametrize("source", [None, "", "   \n\t"])
def test_empty_expression_is_always_true(source: str | None) -> None:
    shape = analyze(source)
    assert shape == ExpressionShape(source or "", (), True)
    assert equalities_hold(shape, {})
    validate(source)
    assert compile_program(source or "").matches({"anything": 1})


def test_string_escapes_are_decoded_like_cel() -> None:
    source = r"input.s == 'a\n\x41\101\u00e9\U0001F600\'\\' && input.t == r'\n'"
    shape = analyze(source)
    assert [e.value for e in shape.equalities] == ["a\nAAé😀'\\", "\\n"]
    assert cel_true(source, {"s": "a\nAAé😀'\\", "t": "\\n"})
    assert equalities_hold(shape, {"s": "a\nAAé😀'\\", "t": "\\n"})


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["input.x ==", "input.x = 1", "input.$x == 1", "'open"])
def test_invalid_syntax_is_explained(source: str) -> None:
    for call in (analyze, validate, compile_program):
        with pytest.raises(InvalidExpressionError) as info:
            call(source)
        message = str(info.value)
        assert repr(source) in message
        assert "syntax error at line 1, column" in message
        assert "`input`" in message
    assert issubclass(InvalidExpressionError, ValueError)


def test_missing_field_raises_evaluation_error() -> None:
    with pytest.raises(ExpressionEvaluationError, match=r"input\.x == 1.*'x'"):
        compile_program("input.x == 1").matches({"y": 1})
    with pytest.raises(ExpressionEvaluationError):
        compile_program("input.a.b == 1").matches({"a": "not a map"})


def test_type_mismatch_raises_evaluation_error() -> None:
    with pytest.raises(ExpressionEvaluationError, match="no matching overload"):
        compile_program("input.x > 1").matches({"x": "a string"})


def test_unknown_variable_fails_at_match_time_with_short_message() -> None:
    validate("payload.x == 1")  # cel-python only resolves names when evaluating
    with pytest.raises(ExpressionEvaluationError) as info:
        compile_program("payload.x == 1").matches({"x": 1})
    assert "undeclared reference to 'payload'" in str(info.value)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(
    ("source", "payload", "shown"),
    [("input.x", {"x": 3}, "int 3"), ("input.s", {"s": "v"}, "string 'v'"), ("null", {}, "null")],
)
def test_non_bool_result_raises(source: str, payload: dict[str, Any], shown: str) -> None:
    with pytest.raises(ExpressionEvaluationError, match="must evaluate to a bool") as info:
        compile_program(source).matches(payload)
    assert shown in str(info.value)


def test_payload_outside_cel_range_raises() -> None:
    with pytest.raises(ExpressionEvaluationError, match="64 bits"):
        compile_program("input.a == 1").matches({"a": 1, "big": 2**64})


def test_matches_and_short_circuit() -> None:
    program = compile_program("input.kind == 'approve' && input.amount > 10")
    assert program.matches({"kind": "approve", "amount": 11})
    assert not program.matches({"kind": "approve", "amount": 3})
    assert not program.matches({"kind": "reject"})  # false && error -> false in CEL


def test_compile_program_is_cached() -> None:
    assert compile_program("input.q == 1") is compile_program("input.q == 1")


# --- cel-python typing facts the index relies on -----------------------------------------


@pytest.mark.parametrize(
    ("source", "payload", "expected"),
    [
        ("input.x == 1", {"x": 1.0}, False),  # int vs double: error
        ("input.x == 1.0", {"x": 1}, False),
        ("input.x == 0.0", {"x": -0.0}, True),
        ("input.x == 1e400", {"x": math.inf}, True),
        ("input.x == 1", {"x": True}, True),  # lopsided bool/int
        ("1 == input.x", {"x": True}, False),
        ("true == input.x", {"x": 1}, True),
        ("input.x == true", {"x": 1}, False),
        ("input.x == '1'", {"x": 1}, False),
        ("input.x == null", {"x": None}, True),
        ("input.x == null", {"x": "a"}, False),
        ("input.x == null", {}, False),
        ("input.x.y == 1", {"x": 1}, False),
    ],
)
def test_cel_python_equality_facts(source: str, payload: dict[str, Any], expected: bool) -> None:
    assert cel_true(source, payload) is expected
    assert equalities_hold(analyze(source), payload) or not expected


def test_equality_key_separates_python_lookalikes() -> None:
    keys = [equality_key(v) for v in ("1", 1, 1.0, None)]
    assert len(set(keys)) == 4
    assert equality_key(True) == equality_key(1)  # cel-python compares them (one way)
    assert equality_key(-0.0) == equality_key(0.0)
    assert equality_key(math.nan) is None
    assert equality_key(2**63) is None
    assert equality_key([1]) is None and equality_key({"a": 1}) is None


# --- property: fully-indexed shapes agree with CEL ----------------------------------------

KEYS = ("a", "b", "c")
# Literal text -> the Python value CEL gives it.
LITERALS: list[tuple[str, JsonScalar]] = [
    ("0", 0),
    ("1", 1),
    ("-1", -1),
    ("2", 2),
    ("0x10", 16),
    ("9223372036854775807", 2**63 - 1),
    ("-9223372036854775808", -(2**63)),
    ("0u", 0),
    ("1u", 1),
    ("0.0", 0.0),
    ("-0.0", -0.0),
    ("1.0", 1.0),
    ("1.5", 1.5),
    ("1e400", math.inf),
    ("true", True),
    ("false", False),
    ("null", None),
]
SCALARS: list[Any] = [0, 1, -1, 2, 16, 2**63 - 1, -(2**63), 0.0, -0.0, 1.0, 1.5, math.inf]
SCALARS += [math.nan, True, False, None, "", "1", "a", "true", "null", "é'\"\\\n"]


@st.composite
def string_literal(draw: st.DrawFn) -> tuple[str, str]:
    """A CEL string literal spelling a drawn value, with assorted escapes; (text, value)."""
    value = draw(st.text(alphabet="a1 '\"\\\né😀", max_size=5))
    quote = draw(st.sampled_from("'\""))
    out = []
    for ch in value:
        style = draw(st.integers(0, 2))
        if ch in "\\'\"" or ch == "\n":
            out.append({"\n": "\\n"}.get(ch, "\\" + ch))
        elif style == 1 and ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif style == 2:
            out.append(f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return quote + "".join(out) + quote, value


def lookalikes(value: JsonScalar) -> list[Any]:
    """Payload values equal to ``value`` or easily confused with it in Python."""
    if value is None:
        return [None, "null", 0]
    if isinstance(value, str):
        return [value, value + "x", 1]
    out: list[Any] = [value, str(value)]
    if isinstance(value, bool | int) and value in (0, 1):
        out += [bool(value), int(value), float(value)]
    elif isinstance(value, int):
        out += [float(value), value + 1]
    elif math.isfinite(value):
        out += [int(value), -value, value + 0.5]
    return out


@st.composite
def equality_source(draw: st.DrawFn) -> tuple[str, tuple[str, ...], JsonScalar]:
    path = tuple(draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=2)))
    if draw(st.booleans()):
        operand = "input." + ".".join(path)
    else:
        operand = "input" + "".join(f'["{p}"]' for p in path)
    literal, value = draw(st.one_of(st.sampled_from(LITERALS), string_literal()))
    left, right = (operand, literal) if draw(st.booleans()) else (literal, operand)
    text = f"{left} == {right}"
    return (f"({text})" if draw(st.integers(0, 3)) == 0 else text), path, value


random_payloads = st.recursive(
    st.sampled_from(SCALARS) | st.text(alphabet="a1é'\"\\\n", max_size=3),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from(KEYS), inner),
    max_leaves=6,
).map(lambda v: v if isinstance(v, dict) else {"a": v})


Case = tuple[str, dict[str, Any], list[tuple[tuple[str, ...], type, JsonScalar]]]


@st.composite
def expression_and_payload(draw: st.DrawFn) -> Case:
    """A conjunction of equalities, and a payload that often (nearly) satisfies it."""
    parts = draw(st.lists(equality_source(), min_size=1, max_size=3))
    text = parts[0][0]
    for part, _, _ in parts[1:]:
        text = f"({text} && {part})" if draw(st.booleans()) else f"{text} && {part}"
    payload: dict[str, Any] = draw(random_payloads)
    for _, path, value in parts:
        choice = draw(st.integers(0, 9))
        if choice < 7:
            set_path(payload, path, draw(st.sampled_from(lookalikes(value))))
        elif choice == 7:
            set_path(payload, path[:1], draw(st.sampled_from(SCALARS)))  # maybe not a map
    return text, payload, [(path, type(value), value) for _, path, value in parts]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=expression_and_payload())
def test_equalities_hold_agrees_with_cel(case: Case) -> None:
    source, payload, expected = case
    shape = analyze(source)
    assert [(e.path, type(e.value), e.value) for e in shape.equalities] == expected
    truth = cel_true(source, payload)
    held = equalities_hold(shape, payload)
    if shape.fully_indexed:
        assert held is truth
    else:
        assert held or not truth  # always a safe pre-filter


@settings(max_examples=100, deadline=None)
@given(case=expression_and_payload())
def test_equalities_under_or_are_not_extracted(case: Case) -> None:
    source = case[0]
    shape = analyze(f"{source} || input.zz == 1")
    assert shape.equalities == () and not shape.fully_indexed
    shape = analyze(f"input.c == 'x' && ({source} || false)")
    assert shape.equalities == (Equality(("c",), "x"),) and not shape.fully_indexed


# -- the fast path for `input.<field> == '<plain text>'` ------------------------------------

_plain_text = st.text(
    alphabet=st.characters(blacklist_characters="'\\", blacklist_categories=("Cc", "Cs")),
    max_size=20,
)
_field = st.from_regex(r"[_a-zA-Z][_a-zA-Z0-9]{0,8}", fullmatch=True)


@given(field=_field, value=_plain_text, spaces=st.sampled_from(["", " ", "  ", "\t"]))
@settings(max_examples=150, deadline=None)
def test_fast_path_shape_equals_full_analysis(field: str, value: str, spaces: str) -> None:
    source = f"{spaces}input.{field}{spaces}=={spaces}'{value}'{spaces}"
    fast = analyze(source)
    full = analyze(f"({source})")  # the parentheses force the parser path
    assert fast.equalities == full.equalities
    assert fast.fully_indexed == full.fully_indexed
    matching = {field: value}
    assert equalities_hold(fast, matching) == cel_true(source, matching)
    assert equalities_hold(fast, {field: value + "x"}) == cel_true(source, {field: value + "x"})


@pytest.mark.parametrize(
    "source", ["input.in == 'a'", "input.a == 'it\\'s'", 'input.a == "x"', "input.a == '\\n'"]
)
def test_forms_outside_the_fast_path_get_the_parser_answer(source: str) -> None:
    shape, parsed = analyze(source), analyze(f"({source})")
    assert (shape.equalities, shape.fully_indexed) == (parsed.equalities, parsed.fully_indexed)
