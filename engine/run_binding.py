"""Binding a workflow run's own values into the CEL of its event conditions.

A workflow's ``UserEventCondition("review:decision", "input.runId == run.id")`` is written
once for every run. When a run's task registers its wait, ``run.id`` and ``run.input.<path>``
are replaced by that run's values, as literals: the matcher then sees
``input.runId == 'r-123'`` (the inbox's decision convention), an equality its index
serves, and evaluates nothing per run but the payload (``input``).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from tether.engine.expressions import InvalidExpressionError

# `run.id`, `run.input`, `run.input.a.b`: not after a dot or a name character (so
# `x.run.id` and `my_run.id` are left alone), and only outside string literals.
_RUN_REFERENCE = re.compile(r"(?<![\w.])run\.(id|input)((?:\.[A-Za-z_]\w*)*)(?!\w)")
_STRING = re.compile(r"""[rRbB]{0,2}('''|\"\"\"|'|")""")


def bind_run(expression: str | None, run_id: str, run_input: Any) -> str | None:
    """``expression`` with ``run.id`` and ``run.input[.path]`` replaced by this run's
    values; raises :class:`InvalidExpressionError` for a path the input does not have."""
    if not expression or "run." not in expression:
        return expression
    out: list[str] = []
    for code, literal in _split_strings(expression):
        out.append(_RUN_REFERENCE.sub(lambda m: _literal_for(m, run_id, run_input), code))
        out.append(literal)
    return "".join(out)


def _literal_for(match: re.Match[str], run_id: str, run_input: Any) -> str:
    if match.group(1) == "id":
        if match.group(2):
            raise InvalidExpressionError(f"run.id has no fields: {match.group(0)!r}")
        # quoted as the decision convention writes it (run ids hold no quotes)
        return f"'{run_id}'"
    value = run_input
    for name in match.group(2).split(".")[1:]:
        if not isinstance(value, dict) or name not in value:
            raise InvalidExpressionError(
                f"{match.group(0)!r}: the run's input has no field {name!r}"
            )
        value = value[name]
    return cel_literal(value)


def cel_literal(value: Any) -> str:
    """A JSON value written as a CEL literal (JSON's strings, numbers, lists and maps are
    CEL's, and ``null`` is CEL's too)."""
    if isinstance(value, dict):
        items = ", ".join(f"{cel_literal(str(k))}: {cel_literal(v)}" for k, v in value.items())
        return "{" + items + "}"
    if isinstance(value, list):
        return "[" + ", ".join(cel_literal(v) for v in value) + "]"
    return orjson.dumps(value).decode()


def _split_strings(source: str) -> list[tuple[str, str]]:
    """``source`` cut into (code, string literal that follows it) pairs."""
    parts: list[tuple[str, str]] = []
    position = 0
    while position < len(source):
        opening = _STRING.search(source, position)
        if opening is None:
            parts.append((source[position:], ""))
            break
        quote = opening.group(1)
        raw = "r" in opening.group(0)[: -len(quote)].lower()
        end = opening.end()
        while end < len(source) and not source.startswith(quote, end):
            end += 2 if source[end] == "\\" and not raw else 1
        end = min(len(source), end + len(quote))
        parts.append((source[position : opening.start()], source[opening.start() : end]))
        position = end
    return parts
