"""``tether serve``: the engine service and the projections in one process."""

from __future__ import annotations

import logging

from tether.engine.config import Settings
from tether.engine.connection import Connection
from tether.engine.service import EngineService
from tether.projections.matcher import Matcher
from tether.projections.timer import TimerProjection

log = logging.getLogger("tether.serve")


class TetherServer:
    def __init__(self, settings: Settings, *, matcher_window_s: float = 30.0) -> None:
        self.settings = settings
        self._matcher_window_s = matcher_window_s
        self.conn: Connection | None = None
        self.engine: EngineService | None = None
        self.matcher: Matcher | None = None
        self.timer: TimerProjection | None = None

    async def start(self) -> None:
        self.conn = await Connection.open(self.settings, name="tether-serve")
        self.engine = EngineService(self.conn)
        self.matcher = Matcher(self.conn, window_s=self._matcher_window_s)
        self.timer = TimerProjection(self.conn)
        await self.engine.start()
        await self.matcher.start()
        await self.timer.start()
        log.info("tether serve running", extra={"nats_url": self.settings.nats_url,
                                                 "namespace": self.settings.namespace})

    async def stop(self) -> None:
        for part in (self.timer, self.matcher, self.engine):
            if part is not None:
                await part.stop()
        if self.conn is not None:
            await self.conn.close()
            self.conn = None
        log.info("tether serve stopped")

    async def __aenter__(self) -> TetherServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
