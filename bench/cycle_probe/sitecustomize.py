"""Marks for ``bench/cycle_probe.py``, loaded by every Python process whose ``PYTHONPATH``
holds this folder. With ``TETHER_PROBE_DIR`` set, each process appends to
``<dir>/<pid>.log`` one line per mark: the wall time, then ``R`` and the NATS subjects of
bytes read from a socket, ``W`` and those of bytes written by nats-py, or ``>``/``<`` and
the name of a function entered or left. Without it, this does nothing."""

from __future__ import annotations

import asyncio.streams
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, TextIO

# Functions marked on entry and exit, by module: where a cycle's Python time goes.
MARKED = {
    "tether.projections.matcher": ["Matcher._on_event_msg", "Matcher._resolve"],
    "tether.engine.service": ["EngineService.handle"],
    "tether.engine.acked_publish": ["AckedPublisher.publish"],
    "tether.runtime.early_resume": ["EarlyResumes._on_stored"],
    "tether.runtime.executor": ["run_attempt", "fold"],
    "tether.task": ["DurableTask.invoke"],
    "tether.terminal_watch": ["TerminalWatch._on_msg"],
    "tether.client": ["RunsClient._result"],
}
SUBJECTS = re.compile(rb"(?:H?PUB|H?MSG) (\S+)")
SCANNED_BYTES = 4096


def _install(log: TextIO) -> None:
    def note(kind: str, data: bytes | bytearray | memoryview | Sequence[bytes]) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            data = b"".join(data)
        chunk = bytes(data[:SCANNED_BYTES])
        subjects = " ".join(m.decode(errors="replace") for m in SUBJECTS.findall(chunk))
        log.write(f"{time.time():.6f} {kind} {subjects}\n")

    def marked(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                log.write(f"{time.time():.6f} > {name}\n")
                try:
                    return await fn(*args, **kwargs)
                finally:
                    log.write(f"{time.time():.6f} < {name}\n")

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            log.write(f"{time.time():.6f} > {name}\n")
            try:
                return fn(*args, **kwargs)
            finally:
                log.write(f"{time.time():.6f} < {name}\n")

        return wrapper

    def mark_module(module: ModuleType, names: list[str]) -> None:
        for qualified in names:
            owner: Any = module
            *path, attribute = qualified.split(".")
            for part in path:
                owner = getattr(owner, part)
            setattr(owner, attribute, marked(getattr(owner, attribute), qualified))

    class MarkingFinder(importlib.abc.MetaPathFinder):
        def find_spec(
            self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
        ) -> importlib.machinery.ModuleSpec | None:
            if fullname not in MARKED:
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(fullname)
            finally:
                sys.meta_path.insert(0, self)
            loader = spec.loader if spec is not None else None
            if spec is None or loader is None:
                return None
            load = loader.exec_module

            def exec_module(module: ModuleType) -> None:
                load(module)
                mark_module(module, MARKED[fullname])

            loader.exec_module = exec_module  # type: ignore[method-assign]
            return spec

    protocol = asyncio.streams.StreamReaderProtocol
    data_received = protocol.data_received

    def reading(self: asyncio.streams.StreamReaderProtocol, data: bytes) -> None:
        note("R", data)
        data_received(self, data)

    protocol.data_received = reading  # type: ignore[method-assign]

    import nats.aio.transport

    transport = nats.aio.transport.TcpTransport
    write, writelines = transport.write, transport.writelines

    def writing(self: Any, payload: bytes) -> None:
        note("W", payload)
        write(self, payload)

    def writing_lines(self: Any, payload: list[bytes]) -> None:
        note("W", payload)
        writelines(self, payload)

    transport.write = writing  # type: ignore[method-assign]
    transport.writelines = writing_lines  # type: ignore[method-assign]
    sys.meta_path.insert(0, MarkingFinder())


_folder = os.environ.get("TETHER_PROBE_DIR")
if _folder:
    # one line per write, so that a process stopped by a signal loses nothing
    _install(open(os.path.join(_folder, f"{os.getpid()}.log"), "a", buffering=1))  # noqa: SIM115
