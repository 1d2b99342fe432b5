"""How the CLI shows runs and waits in a terminal: tables, ages and compact JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from tether.http import schemas

MAX_CELL = 60


def cell(value: object, width: int = MAX_CELL) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces; long cells are shortened."""
    cells = [[cell(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def span(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m"
    if seconds < 172800:
        return f"{seconds // 3600:.0f}h"
    return f"{seconds // 86400:.0f}d"


def ago(at: float | None, now: float | None = None) -> str:
    if not at:
        return "-"
    return f"{span((now or time.time()) - at)} ago"


def until(at: float | None, now: float | None = None) -> str:
    if not at:
        return "-"
    delta = at - (now or time.time())
    return f"in {span(delta)}" if delta >= 0 else f"overdue {span(delta)}"


def stamp(at: float | None) -> str:
    if not at:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def compact(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "), ensure_ascii=False, default=str)


def action_text(wait: schemas.Wait) -> str:
    action = wait.proposed_action
    if action is None:
        return "-"
    if isinstance(action, schemas.WaitAction):
        parts = [action.description] if action.description else []
        if action.details is not None:
            parts.append(compact(action.details))
        return " ".join(parts)
    return f"{action.step}: {compact(action.output)}"
