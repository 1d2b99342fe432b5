"""Run the HTTP API and dashboard: a run index, the aiohttp app and its listening socket."""

from __future__ import annotations

import logging

from aiohttp import web

from tether.app import Tether
from tether.engine.config import Settings
from tether.engine.nats_server import listen_refusal
from tether.engine.reconnect import ClosedConnectionWatch
from tether.http.routes import ApiContext, build_app
from tether.operator.auth import AuthConfigError, TokenAuth
from tether.projections.run_index import RunIndex

log = logging.getLogger("tether.api")

DEFAULT_HTTP = "127.0.0.1:8080"


class HttpAddressError(ValueError):
    pass


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; ``:PORT`` means 127.0.0.1); port 0 = any free."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise HttpAddressError(
            f"invalid HTTP address {address!r}: use HOST:PORT, e.g. {DEFAULT_HTTP}"
        )
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port_text)


def check_address_free(address: str) -> None:
    """Raise HttpAddressError if ``address`` (HOST:PORT) cannot be listened on now."""
    host, port = parse_address(address)
    refusal = listen_refusal(host, port) if port else None
    if refusal is not None:
        raise HttpAddressError(
            f"cannot listen on {address} ({refusal}): another process (a second `tether "
            "dev`?) uses it; stop it or choose another with --http HOST:PORT (port 0 picks "
            "a free one)"
        )


class ApiServer:
    """The API and dashboard on ``address``, reading runs through its own run index."""

    def __init__(
        self,
        settings: Settings,
        auth: TokenAuth,
        *,
        address: str = DEFAULT_HTTP,
        tether: Tether | None = None,
    ) -> None:
        self.settings = settings
        self.auth = auth
        self.host, self.port = parse_address(address)
        self._own_tether = tether is None
        self.tether = tether or Tether(settings=settings)
        self.index: RunIndex | None = None
        self._context: ApiContext | None = None
        self._runner: web.AppRunner | None = None
        self._watch: ClosedConnectionWatch | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def check_config(self) -> None:
        """Raise ``AuthConfigError`` if the API cannot run as configured (no tokens)."""
        if not len(self.auth):
            raise AuthConfigError(
                "no API tokens configured: set TETHER_API_TOKENS (JSON, e.g. "
                '\'{"<token>": {"name": "alice", "keys": ["approval:*"]}}\') or pass '
                "--tokens FILE; the API refuses to run without authentication"
            )

    async def start(self) -> None:
        self.check_config()
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        log.info("HTTP API and dashboard listening", extra={"url": self.url})

    async def _start(self) -> None:
        conn = await self.tether.connection()
        self.index = RunIndex(conn)
        await self.index.start()
        context = ApiContext(tether=self.tether, index=self.index, auth=self.auth)
        self._context = context
        app = build_app(context, max_body_bytes=self.settings.max_event_bytes + 64 * 1024)
        self._runner = web.AppRunner(app, shutdown_timeout=3.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            raise HttpAddressError(
                f"cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); choose "
                "another address with --http HOST:PORT"
            ) from exc
        for address in self._runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                self.port = int(address[1])
                break
        self._watch = ClosedConnectionWatch("http-api", self._index_closed, self._new_index)
        self._watch.start()

    def _index_closed(self) -> bool:
        return self.index is not None and self.index.connection_closed

    async def _new_index(self) -> None:
        """Rebuild the run index on a new connection (the app reopens its own on use)."""
        index = RunIndex(await self.tether.connection())
        await index.start()
        old, self.index = self.index, index
        if self._context is not None:
            self._context.index = index
        if old is not None:
            await old.stop()

    async def stop(self) -> None:
        if self._watch is not None:
            await self._watch.stop()
            self._watch = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.index is not None:
            await self.index.stop()
            self.index = None
        if self._own_tether:
            await self.tether.close()

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
