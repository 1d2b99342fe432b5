"""Create the streams, bucket and durable consumers Tether needs; safe to run at every start."""

from __future__ import annotations

import logging
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError

from tether.engine.config import Settings

log = logging.getLogger("tether.provision")

_STREAM_NAME_IN_USE = 10058
_CONSUMER_EXISTS = 10148


def stream_configs(settings: Settings) -> list[StreamConfig]:
    names = settings.names
    common: dict[str, Any] = {"storage": StorageType.FILE, "num_replicas": settings.replicas}
    return [
        # The run log: no limits (limits silently delete events), no deletes, no purges.
        StreamConfig(
            name=names.runs_stream,
            subjects=[names.runs_all],
            retention=RetentionPolicy.LIMITS,
            deny_delete=True,
            deny_purge=True,
            allow_direct=True,
            duplicate_window=120.0,
            max_msg_size=max(settings.max_event_bytes * 2, 1024 * 1024),
            **common,
        ),
        # Pushed events; their sequence is the position waits match from. Kept forever
        # unless TETHER_EVENTS_MAX_AGE_S says otherwise (the duplicate window must fit).
        StreamConfig(
            name=names.events_stream,
            subjects=[names.events_all],
            retention=RetentionPolicy.LIMITS,
            allow_direct=True,
            duplicate_window=min(120.0, settings.events_max_age_s or 120.0),
            max_age=settings.events_max_age_s or None,
            max_msg_size=settings.max_event_bytes,
            discard=DiscardPolicy.OLD,
            **common,
        ),
        # Events the matcher could not use (bad JSON, not an object), kept for inspection.
        StreamConfig(
            name=names.rejected_stream,
            subjects=[names.rejected_all],
            retention=RetentionPolicy.LIMITS,
            allow_direct=True,
            duplicate_window=120.0,
            max_age=30 * 24 * 3600.0,
            **common,
        ),
        StreamConfig(
            name=names.tasks_stream,
            subjects=[names.tasks_all],
            retention=RetentionPolicy.WORK_QUEUE,
            duplicate_window=120.0,
            **common,
        ),
        StreamConfig(
            name=names.commands_stream,
            subjects=[names.commands_all],
            retention=RetentionPolicy.WORK_QUEUE,
            duplicate_window=120.0,
            **common,
        ),
    ]


async def ensure_streams(js: JetStreamContext, settings: Settings, *, update: bool) -> None:
    """Create what is missing. Only the engine service (``update=True``) changes existing
    streams; a worker or client whose settings differ leaves them alone, so one
    misconfigured process cannot, say, drop a cluster's streams to one replica."""
    for config in stream_configs(settings):
        try:
            await js.add_stream(config)
        except APIError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise
            if update:
                await js.update_stream(config)
            else:
                log.warning(
                    "stream exists with other settings; leaving it as it is",
                    extra={"stream": config.name},
                )
    await js.create_key_value(
        KeyValueConfig(
            bucket=settings.names.deadlines_bucket,
            history=1,
            storage=StorageType.FILE,
            replicas=settings.replicas,
            direct=True,
        )
    )


async def ensure_pull_consumer(
    js: JetStreamContext,
    stream: str,
    durable: str,
    *,
    filter_subjects: list[str],
    ack_wait_s: float = 30.0,
    max_ack_pending: int = 20_000,
) -> None:
    """Create a durable pull consumer, or bring an existing one to this configuration."""
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait_s,
        max_ack_pending=max_ack_pending,
        max_waiting=4096,
        filter_subject=filter_subjects[0] if len(filter_subjects) == 1 else None,
        filter_subjects=filter_subjects if len(filter_subjects) > 1 else None,
    )
    try:
        await js.add_consumer(stream, config)
    except BadRequestError as exc:
        if exc.err_code != _CONSUMER_EXISTS:
            raise
        log.info("updating consumer", extra={"stream": stream, "consumer": durable})
        await js.add_consumer(stream, config)
