"""WaitIndex: never misses a wait CEL would match, stays tidy, and stays small."""

from __future__ import annotations

import gc
import math
import tracemalloc
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.cel_reference import cel_true, set_path
from tether.engine.expression_shapes import Equality, ExpressionShape
from tether.engine.expressions import analyze
from tether.projections.wait_index import WaitIndex


def assert_empty(index: WaitIndex[Any]) -> None:
    assert len(index) == 0
    assert index._entries == {}
    assert index._by_key == {}


def test_add_find_remove() -> None:
    index: WaitIndex[str] = WaitIndex()
    index.add("w1", "approval", analyze("input.runId == 'r1'"))
    index.add("w2", "approval", analyze("input.runId == 'r2' && input.ok == true"))
    index.add("w3", "approval", analyze(None))
    index.add("w4", "other", analyze("input.runId == 'r1'"))
    assert len(index) == 4 and "w1" in index and "nope" not in index
    assert sorted(index.candidates("approval", {"runId": "r1"})) == ["w1", "w3"]
    assert sorted(index.candidates("approval", {"runId": "r2"})) == ["w2", "w3"]
    assert index.candidates("approval", {}) == ["w3"]
    assert index.candidates("missing-key", {"runId": "r1"}) == []
    assert index.remove("w1") is True
    assert index.remove("w1") is False
    assert index.candidates("approval", {"runId": "r1"}) == ["w3"]
    for wait_id in ("w2", "w3", "w4"):
        assert index.remove(wait_id)
    assert_empty(index)


def test_re_adding_replaces_the_old_filing() -> None:
    index: WaitIndex[int] = WaitIndex()
    index.add(1, "k", analyze("input.a == 'x'"))
    index.add(1, "k2", analyze("input.a == 'y'"))
    assert len(index) == 1
    assert index.candidates("k", {"a": "x"}) == []
    assert index.candidates("k2", {"a": "y"}) == [1]
    index.remove(1)
    assert_empty(index)


def test_shared_bucket_grows_and_shrinks() -> None:
    index: WaitIndex[int] = WaitIndex()
    shape = analyze("input.runId == 'same'")
    for wait_id in range(3):
        index.add(wait_id, "k", shape)
    assert sorted(index.candidates("k", {"runId": "same"})) == [0, 1, 2]
    index.remove(1)
    assert sorted(index.candidates("k", {"runId": "same"})) == [0, 2]
    index.remove(0)
    assert index.candidates("k", {"runId": "same"}) == [2]
    assert index._by_key["k"].paths[("runId",)][("s", "same")] == 2  # compact again
    index.remove(2)
    assert_empty(index)


def test_lookalike_values_do_not_share_buckets() -> None:
    index: WaitIndex[str] = WaitIndex()
    for wait_id, source in [
        ("int", "input.x == 1"),
        ("double", "input.x == 1.0"),
        ("string", "input.x == '1'"),
        ("null", "input.x == null"),
        ("zero", "input.x == 0.0"),
    ]:
        index.add(wait_id, "k", analyze(source))
    assert index.candidates("k", {"x": 1}) == ["int"]
    assert index.candidates("k", {"x": True}) == ["int"]  # CEL: input.x == 1 holds for true
    assert index.candidates("k", {"x": 1.0}) == ["double"]
    assert index.candidates("k", {"x": "1"}) == ["string"]
    assert index.candidates("k", {"x": None}) == ["null"]
    assert index.candidates("k", {"x": -0.0}) == ["zero"]
    assert index.candidates("k", {"x": math.nan}) == []
    assert index.candidates("k", {"x": [1]}) == []  # unhashable: no bucket, no error
    assert index.candidates("k", {"x": {"y": 1}}) == []


def test_bool_literal_on_the_left_is_found_by_int_payload() -> None:
    index: WaitIndex[str] = WaitIndex()
    index.add("w", "k", analyze("true == input.flag"))
    assert cel_true("true == input.flag", {"flag": 1})
    assert index.candidates("k", {"flag": 1}) == ["w"]


def test_expressions_without_top_level_equalities_are_unconstrained() -> None:
    index: WaitIndex[str] = WaitIndex()
    index.add("or", "k", analyze("input.a == 1 || input.b == 2"))
    index.add("gt", "k", analyze("input.a > 1"))
    index.add("big", "k", ExpressionShape("x", (Equality(("a",), 2**64),), False))
    assert sorted(index.candidates("k", {})) == ["big", "gt", "or"]


def test_nested_paths_and_non_map_parents() -> None:
    index: WaitIndex[str] = WaitIndex()
    index.add("w", "k", analyze("input.a.b == 'v'"))
    assert index.candidates("k", {"a": {"b": "v"}}) == ["w"]
    assert index.candidates("k", {"a": "v"}) == []
    assert index.candidates("k", {"a": None}) == []
    assert index.candidates("k", {}) == []


# --- property: never misses a matching wait -----------------------------------------------

KEYS = ("a", "b")
VALUES: list[Any] = [0, 1, 2, -1, 0.0, -0.0, 1.0, 2.5, True, False, None, "", "1", "x", "null"]
LITERALS = ["0", "1", "2", "-1", "0.0", "-0.0", "1.0", "2.5", "true", "false", "null", "''"]
LITERALS += ["'1'", "'x'", '"null"', "1u", "0u"]


@st.composite
def equality(draw: st.DrawFn) -> str:
    path = ".".join(draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=2)))
    literal = draw(st.sampled_from(LITERALS))
    return f"input.{path} == {literal}" if draw(st.booleans()) else f"{literal} == input.{path}"


@st.composite
def expression(draw: st.DrawFn) -> str | None:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return None
    if kind == 1:
        return f"{draw(equality())} || {draw(equality())}"
    if kind == 2:
        return f"input.a != {draw(st.sampled_from(LITERALS))}"
    parts = draw(st.lists(equality(), min_size=1, max_size=3))
    if kind == 3:
        parts.append(f"({draw(equality())} || {draw(equality())})")
    return " && ".join(parts)


random_payloads = st.dictionaries(
    st.sampled_from(KEYS),
    st.sampled_from(VALUES) | st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES)),
)


def lookalikes(value: Any) -> list[Any]:
    """Payload values CEL may call equal to ``value``, plus Python lookalikes."""
    if value is None:
        return [None, "null", 0]
    if isinstance(value, str):
        return ["", "1", "x", "null", 1]
    if isinstance(value, float):
        return [0.0, -0.0, 1.0, 2.5, 2.0, 1]
    return [0, 1, 2, -1, True, False, 1.0]


def cel_equal(value: Any) -> list[Any]:
    """Payload values that cel-python may find equal to the literal ``value``."""
    if isinstance(value, bool | int) and value in (0, 1):
        return [value, bool(value), int(value)]
    if isinstance(value, float) and value == 0:
        return [0.0, -0.0]
    return [value]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    waits=st.lists(st.tuples(st.sampled_from(["k1", "k2"]), expression()), max_size=12),
    data=st.data(),
)
def test_candidates_never_miss_a_match(
    waits: list[tuple[str, str | None]], data: st.DataObject
) -> None:
    index: WaitIndex[int] = WaitIndex()
    shapes = [analyze(source) for _, source in waits]
    for wait_id, ((event_key, _), shape) in enumerate(zip(waits, shapes, strict=True)):
        index.add(wait_id, event_key, shape)
    for _ in range(data.draw(st.integers(1, 6))):
        event_key = data.draw(st.sampled_from(["k1", "k2", "k3"]))
        payload = data.draw(random_payloads)
        if waits and data.draw(st.integers(0, 3)) > 0:  # aim at one wait, CEL-equal or close
            target = data.draw(st.integers(0, len(waits) - 1))
            event_key = waits[target][0]
            for eq in shapes[target].equalities:
                near = cel_equal(eq.value) if data.draw(st.integers(0, 3)) else lookalikes(eq.value)
                set_path(payload, eq.path, data.draw(st.sampled_from(near)))
        found = index.candidates(event_key, payload)
        assert len(found) == len(set(found))
        for wait_id in found:
            assert waits[wait_id][0] == event_key
        for wait_id, (wait_key, source) in enumerate(waits):
            if wait_key == event_key and cel_true(source or "", payload):
                assert wait_id in found, (source, payload)
    for wait_id in range(len(waits)):
        assert index.remove(wait_id)
    assert_empty(index)


# --- memory -------------------------------------------------------------------------------


def test_memory_per_wait_is_small() -> None:
    count = 20_000
    ids = [str(uuid.uuid4()) for _ in range(count)]
    shapes = [
        ExpressionShape(f"input.runId == '{i}'", (Equality(("runId",), i),), True) for i in ids
    ]
    index: WaitIndex[str] = WaitIndex()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for wait_id, shape in zip(ids, shapes, strict=True):
            index.add(wait_id, "approval", shape)
        gc.collect()
        per_wait = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
    print(f"WaitIndex bytes/wait: {per_wait:.0f}")
    assert per_wait < 1000
    assert index.candidates("approval", {"runId": ids[123]}) == [ids[123]]
    for wait_id in ids:
        index.remove(wait_id)
    assert_empty(index)
