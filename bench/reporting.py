"""What every benchmark does around its measurement: warn when the machine is already busy,
and write its figures as JSON."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BUSY_LOAD = 0.5  # a 1-minute load average above this before starting skews the figures


def load_before_start() -> float:
    """The 1-minute load average now; says so when other work will lower the figures."""
    load = os.getloadavg()[0]
    if load > BUSY_LOAD:
        print(
            f"note: load average {load:.2f} before starting: other work on this "
            "machine will lower the figures",
            flush=True,
        )
    return load


def machine(load_start: float) -> dict[str, Any]:
    """The conditions every result file records: when, on how many cores, how busy."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
        "load_avg_1m_start": load_start,
        "load_avg_1m_end": os.getloadavg()[0],
        "python": platform.python_version(),
    }


def write_results(out: Path, config: dict[str, Any], results: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": config, "results": results}, indent=2))
    print(f"\nwritten: {out}")
