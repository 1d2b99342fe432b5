"""Durations as users write them: a ``timedelta``, a number of seconds, or a string such as
``"45s"``, ``"30m"``, ``"2h"``, ``"1d"`` (or combined, ``"1h30m"``)."""

from __future__ import annotations

import re
from datetime import timedelta

Duration = timedelta | int | float | str

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")


def to_timedelta(value: Duration, parameter: str) -> timedelta:
    """``value`` as a timedelta; a ValueError naming ``parameter`` for anything else."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if _WHOLE.fullmatch(text):
            seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(text))
            return timedelta(seconds=seconds)
    raise ValueError(
        f"{parameter}={value!r} is not a duration: give a timedelta, a number of seconds, "
        "or a string such as '45s', '30m', '2h', '1d' or '1h30m'"
    )


def optional_timedelta(value: Duration | None, parameter: str) -> timedelta | None:
    return None if value is None else to_timedelta(value, parameter)


def optional_seconds(value: Duration | None, parameter: str) -> float | None:
    """For ``timeout=`` arguments measured in seconds (None: no limit)."""
    return None if value is None else to_timedelta(value, parameter).total_seconds()


def backoff_delay(initial: timedelta, factor: float, most: timedelta, failure: int) -> float:
    """Seconds before retry number ``failure`` (1-based): ``initial * factor ** (failure -
    1)``, capped at ``most``."""
    delay = initial.total_seconds() * factor ** (failure - 1)
    return float(min(delay, most.total_seconds()))
