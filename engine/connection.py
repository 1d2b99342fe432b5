"""One NATS connection with everything Tether layers on it."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import nats
import nats.errors
import orjson
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from opentelemetry.trace import TracerProvider

from tether.engine import codec, nats_headers, wire
from tether.engine.acked_publish import AckedPublisher
from tether.engine.config import Settings
from tether.engine.event_reads import read_key_events
from tether.engine.jetstream_store import JetStreamEventStore
from tether.engine.namespace import namespace_partitions
from tether.engine.nats_io import DirectReader
from tether.engine.permissions import PermissionWatch
from tether.engine.provision import ensure_bucket, ensure_streams
from tether.engine.tracing import Tracing

log = logging.getLogger("tether.connection")


class NatsUnavailableError(ConnectionError):
    pass


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


def server_urls(nats_url: str) -> list[str]:
    """The servers of a NATS URL setting: one URL, or several separated by commas (a
    cluster's seeds; the client fails over between them and learns the rest)."""
    urls = [part.strip() for part in nats_url.split(",") if part.strip()]
    if not urls:
        raise ValueError("the NATS URL is empty; set TETHER_NATS_URL or pass nats_url")
    return urls


@dataclass
class Connection:
    settings: Settings
    nc: NATS
    js: JetStreamContext
    reader: DirectReader
    store: JetStreamEventStore
    deadlines: KeyValue
    publisher: AckedPublisher

    reconnect_hooks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    tracing: Tracing = field(default_factory=Tracing)
    # The server's permission errors on this connection: ``permissions.guard(subject, req)``
    # fails a denied request at once instead of after the client timeout.
    permissions: PermissionWatch = field(default_factory=PermissionWatch)
    # The run log republishes its events once stored (``Names.stored_runs_*``): notices of
    # runs ending and resolutions for workers come from there.
    stores_notices: bool = True

    def on_reconnect(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` after every reconnect (pull requests made before it are gone)."""
        self.reconnect_hooks.append(hook)

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        name: str = "tether",
        tracer_provider: TracerProvider | None = None,
        manage_streams: bool = False,
    ) -> Connection:
        """Connect and make sure the streams exist; ``manage_streams`` (the engine service)
        also brings existing streams to these settings."""
        nats_headers.install()
        hooks: list[Callable[[], Awaitable[None]]] = []
        watch = PermissionWatch(settings.inbox_prefix)
        # nats-py retries a refused login forever (it reconnects without limit): stop at once.
        credentials_refused = asyncio.Event()
        connecting: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def on_error(exc: Exception) -> None:
            # (at login nats-py reports it as a plain Error with the server's text)
            refused_login = "authorization violation" in str(exc).lower()
            if isinstance(exc, nats.errors.AuthorizationError) or refused_login:
                credentials_refused.set()
            if watch.on_error(exc):
                # The server names the subject; the user's permissions do not allow it.
                log.error("NATS refused an operation (permissions)", extra={"error": str(exc)})
            elif not connecting.done():
                # the first connection is still being tried: its outcome is reported once
                log.debug("NATS not reachable yet", extra={"error": repr(exc)})
            else:
                log.error("NATS error", extra={"error": repr(exc)})

        async def reconnected() -> None:
            log.info("reconnected to NATS", extra={"nats_url": redact(settings.nats_url)})
            for hook in list(hooks):
                try:
                    await hook()
                except Exception:
                    log.exception("reconnect hook failed")

        options: dict[str, Any] = {  # (nats-py's annotations say int; it sleeps a float)
            "name": name,
            "reconnected_cb": reconnected,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "connect_timeout": 5,
            "allow_reconnect": True,
            "error_cb": on_error,
            # Replies come to this prefix: permissions can confine each user to its own.
            "inbox_prefix": settings.inbox_prefix,
        }
        nc = NATS()
        connecting = asyncio.ensure_future(nc.connect(server_urls(settings.nats_url), **options))
        refused = asyncio.ensure_future(credentials_refused.wait())
        try:
            # nats-py retries a first connection forever too: give up after the timeout
            await asyncio.wait(
                {connecting, refused},
                timeout=settings.connect_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except BaseException:  # the caller gave up: so does the connection attempt
            connecting.cancel()
            raise
        finally:
            refused.cancel()
        if not connecting.done():
            connecting.cancel()
            try:
                await connecting
            except (asyncio.CancelledError, Exception) as exc:  # the timeout is reported below
                log.debug("first connection attempt ended", extra={"error": repr(exc)})
            try:
                await nc.close()
            except Exception as exc:  # never connected: nothing to close cleanly
                log.debug("closing the unconnected client failed", extra={"error": repr(exc)})
            if credentials_refused.is_set():
                raise NatsUnavailableError(
                    f"NATS at {redact(settings.nats_url)} refused the credentials "
                    "(authorization failed): check the user and password in TETHER_NATS_URL"
                )
            raise NatsUnavailableError(
                f"no NATS server answered at {redact(settings.nats_url)} within "
                f"{settings.connect_timeout_s:g}s: check that nats-server is running there "
                "with JetStream (`tether dev` runs one) and the URL (--nats-url or "
                "TETHER_NATS_URL)"
            )
        try:
            connecting.result()
        except Exception as exc:
            raise NatsUnavailableError(
                f"cannot connect to NATS at {redact(settings.nats_url)} ({exc}); start a "
                "server with JetStream enabled (`tether dev` runs one) or set TETHER_NATS_URL"
            ) from exc
        js = nc.jetstream(timeout=10)
        try:
            provisioned = await ensure_streams(js, settings, update=manage_streams, watch=watch)
            config = await ensure_bucket(js, settings, settings.names.config_bucket, watch)
            # every subject of a run depends on the namespace's partition count
            settings = settings.with_partitions(await namespace_partitions(js, settings, config))
        except BaseException:
            await nc.close()
            raise
        reader = DirectReader(nc)
        publisher = AckedPublisher(nc)
        store = JetStreamEventStore(nc, js, settings.names, reader, publisher)
        return cls(
            settings,
            nc,
            js,
            reader,
            store,
            provisioned.deadlines,
            publisher,
            hooks,
            Tracing(tracer_provider),
            permissions=watch,
            stores_notices=provisioned.stores_notices,
        )

    async def events_position(self) -> int:
        """The last sequence of the events stream: waits match events after it."""
        # A raw request: nats-py's StreamInfo parsing costs more than the round trip.
        reply = await self.nc.request(
            wire.stream_info(self.settings.names.events_stream), b"", timeout=5.0
        )
        info = orjson.loads(reply.data)
        if "error" in info:
            raise RuntimeError(f"cannot read the events stream position: {info['error']}")
        return int(info["state"]["last_seq"])

    async def read_events(
        self, key: str, since: float, until_seq: int
    ) -> list[tuple[int, dict[str, Any], str | None]]:
        """Events on ``key`` stored at or after ``since`` (epoch seconds) and at or before
        ``until_seq``, as (seq, payload, event id); payloads that are not usable JSON objects
        are skipped."""
        start = datetime.fromtimestamp(since, tz=UTC).isoformat().replace("+00:00", "Z")
        stored = await read_key_events(self.reader, self.settings.names, key, start_time=start)
        out: list[tuple[int, dict[str, Any], str | None]] = []
        for message in stored:
            if message.seq > until_seq:
                break
            try:  # the matcher rejects (and records) the ones that fail this
                payload = codec.loads_object(message.data, "payload")
            except codec.InvalidJsonError:
                continue
            out.append((message.seq, payload, message.headers.get(wire.MSG_ID)))
        return out

    async def close(self) -> None:
        try:
            await self.reader.close()
            await self.publisher.close()
            await self.nc.drain()
        except Exception:
            log.debug("error while closing the NATS connection", exc_info=True)


# How the SDK's clients and workers get their connection: the app opens it on first use
# (and again if NATS closed it for good), so they hold this instead of the app.
ConnectionFactory = Callable[[], Awaitable[Connection]]
