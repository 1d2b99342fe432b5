"""Waiting for SIGINT or SIGTERM in a process that runs until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal


async def until_signalled() -> None:
    """Return once SIGTERM or SIGINT (Ctrl-C) arrives, instead of a KeyboardInterrupt
    traceback; on platforms without signal handlers in the loop, wait forever."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)
