"""``tether serve``: the engine service and the projections in one process."""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

from opentelemetry.trace import TracerProvider

from tether.engine.config import Settings
from tether.engine.connection import Connection, redact
from tether.engine.gc_freeze import freeze_long_lived
from tether.engine.provision import ensure_bucket
from tether.engine.reconnect import ClosedConnectionWatch
from tether.engine.service import EngineService
from tether.partition_owner import PartitionOwner
from tether.projections.checkpoints import Checkpoints
from tether.projections.matcher import Matcher
from tether.projections.timer import TimerProjection

if TYPE_CHECKING:
    from tether.http.server import ApiServer
    from tether.operator.auth import TokenAuth

log = logging.getLogger("tether.serve")


def default_name() -> str:
    """``host:pid``: unique among running processes, and new at every restart."""
    return f"{socket.gethostname()}:{os.getpid()}"


class TetherServer:
    """Engine service, matcher and timer; with ``http`` (``HOST:PORT``) and ``auth`` also the
    HTTP API and dashboard (see ``tether.http.server``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        matcher_window_s: float = 30.0,
        http: str | None = None,
        auth: TokenAuth | None = None,
        tracer_provider: TracerProvider | None = None,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        # Unique per running process: leases are held in this name.
        self.name = name or default_name()
        self._matcher_window_s = matcher_window_s
        self._tracer_provider = tracer_provider
        self._http = http
        self._auth = auth
        self.api: ApiServer | None = None
        self.conn: Connection | None = None
        self.engine: EngineService | None = None
        self.matcher: Matcher | None = None
        self.timer: TimerProjection | None = None
        self.owner: PartitionOwner | None = None
        self._watch: ClosedConnectionWatch | None = None

    async def start(self) -> None:
        api: ApiServer | None = None
        if self._http is not None:  # check the API's configuration before starting anything
            from tether.http.server import ApiServer
            from tether.operator.auth import TokenAuth

            api = ApiServer(self.settings, self._auth or TokenAuth({}), address=self._http)
            api.check_config()
        await self._start_parts()
        self._watch = ClosedConnectionWatch("serve", self._connection_closed, self._restart_parts)
        self._watch.start()
        if api is not None:
            try:
                await api.start()
            except BaseException:
                await self.stop()
                raise
            self.api = api
        freeze_long_lived()
        log.info(
            "tether serve running",
            extra={
                "nats_url": redact(self.settings.nats_url),
                "namespace": self.settings.namespace,
                "serve_name": self.name,
                "partitions": self.owner.partitions if self.owner else [],
            },
        )

    async def _start_parts(self) -> None:
        self.conn = await Connection.open(
            self.settings,
            name="tether-serve",
            tracer_provider=self._tracer_provider,
            manage_streams=True,
        )
        conn = self.conn
        bucket = conn.settings.names.checkpoints_bucket
        checkpoints = Checkpoints(await ensure_bucket(conn.js, conn.settings, bucket))
        self.engine = EngineService(conn)
        self.matcher = Matcher(
            conn,
            resolve=self.engine.handle,
            window_s=self._matcher_window_s,
            checkpoints=checkpoints,
        )
        self.timer = TimerProjection(conn)
        await self.timer.start(partitions=[])
        # Partitions come from leases: the first share is loaded before pushed events are
        # followed (so their waits match from the stream in one pass), later ones catch up.
        self.owner = PartitionOwner(
            conn, self.name, engine=self.engine, matcher=self.matcher, timer=self.timer
        )
        await self.owner.start()
        await self.matcher.follow_events()

    async def _stop_parts(self) -> None:
        if self.owner is not None:
            await self.owner.stop()
            self.owner = None
        for part in (self.timer, self.matcher, self.engine):
            if part is not None:
                await part.stop()
        if self.conn is not None:
            await self.conn.close()
            self.conn = None

    def _connection_closed(self) -> bool:
        return self.conn is not None and self.conn.nc.is_closed

    async def _restart_parts(self) -> None:
        """NATS closed the connection for good: rebuild engine, matcher and timer on a new
        one. Their state is in JetStream, so they pick up where the stream says."""
        await self._stop_parts()
        await self._start_parts()

    async def stop(self) -> None:
        if self._watch is not None:
            await self._watch.stop()
            self._watch = None
        if self.api is not None:
            await self.api.stop()
            self.api = None
        await self._stop_parts()
        log.info("tether serve stopped")

    async def __aenter__(self) -> TetherServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
