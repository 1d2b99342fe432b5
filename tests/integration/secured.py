"""A nats-server with JetStream and the per-role users of ``ops/nats/permissions.conf``, for
tests, and a plain client logged in as one of those users."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS

from tests.helpers import wait_until
from tether.engine.config import Settings
from tether.engine.nats_server import find_binary, free_port
from tether.engine.permissions import NatsPermissionError, PermissionWatch

OPS = Path(__file__).resolve().parents[2] / "ops" / "nats"
# user -> (variable holding its password in the server's environment, its inbox prefix)
ROLES = {
    "tether-operator": ("TETHER_OPERATOR_PASSWORD", "_INBOX_operator"),
    "tether-engine": ("TETHER_ENGINE_PASSWORD", "_INBOX_engine"),
    "worker-payments": ("TETHER_WORKER_PAYMENTS_PASSWORD", "_INBOX_worker-payments"),
    "approver-alice": ("TETHER_APPROVER_ALICE_PASSWORD", "_INBOX_alice"),
    "approver-bob": ("TETHER_APPROVER_BOB_PASSWORD", "_INBOX_bob"),
}
PASSWORDS = {variable: f"pw-{variable.lower()}" for variable, _ in ROLES.values()}
PASSWORDS["NATS_SYS_PASSWORD"] = "pw-sys"


@dataclass
class SecuredNats:
    """A nats-server with JetStream and the shipped permissions, on a free port."""

    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.root / "nats.log"

    def start(self) -> SecuredNats:
        shutil.copy(OPS / "permissions.conf", self.root / "permissions.conf")
        config = self.root / "nats.conf"
        config.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            f'jetstream {{ store_dir: "{self.root / "js"}" }}\n'
            'include "permissions.conf"\n'
        )
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [find_binary(), "-c", str(config)],
                stdout=out,
                stderr=out,
                env={**os.environ, **PASSWORDS},
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return self
            time.sleep(0.02)
        raise AssertionError("nats-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def url(self, user: str) -> str:
        return f"nats://{user}:{PASSWORDS[ROLES[user][0]]}@127.0.0.1:{self.port}"

    def settings(self, user: str, **changes: Any) -> Settings:
        base = Settings(nats_url=self.url(user), namespace="tether", inbox_prefix=ROLES[user][1])
        return dataclasses.replace(base, **changes)

    def violations(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if "Violation" in line]


@contextlib.contextmanager
def secured_nats() -> Iterator[SecuredNats]:
    with tempfile.TemporaryDirectory(prefix="tether-perms-") as root:
        server = SecuredNats(Path(root)).start()
        try:
            yield server
        finally:
            server.stop()


class Raw:
    """A plain nats-py client logged in as one user, noting what the server refuses."""

    def __init__(self, nc: NATS, watch: PermissionWatch) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=5)
        self.watch = watch

    @classmethod
    async def open(cls, server: SecuredNats, user: str, inbox: str | None = None) -> Raw:
        watch = PermissionWatch()

        async def on_error(exc: Exception) -> None:
            watch.on_error(exc)

        nc = await nats.connect(
            server.url(user),
            inbox_prefix=inbox or ROLES[user][1],
            error_cb=on_error,
            allow_reconnect=False,
        )
        return cls(nc, watch)

    async def publish_refused(
        self, subject: str, data: bytes = b"{}", headers: dict[str, str] | None = None
    ) -> bool:
        """Is a JetStream publish to ``subject`` refused by the server?"""
        try:
            await self.watch.guard(subject, self.js.publish(subject, data, headers=headers))
        except NatsPermissionError:
            return True
        return False

    async def subscribe_refused(self, subject: str) -> bool:
        await self.nc.subscribe(subject)
        await self.nc.flush()

        async def refused() -> bool:
            return subject.lower() in self.watch.denied

        with contextlib.suppress(AssertionError):
            return await wait_until(refused, timeout=2, message=f"refusal of {subject}")
        return False

    async def close(self) -> None:
        await self.nc.close()


async def cli(server: SecuredNats, user: str, *argv: str) -> str:
    """``tether <argv>`` in a subprocess holding ``user``'s credentials."""
    env = {
        **os.environ,
        "TETHER_NATS_URL": server.url(user),
        "TETHER_INBOX_PREFIX": ROLES[user][1],
        "TETHER_NAMESPACE": "tether",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tether.cli.main",
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode()
    return out.decode()
