"""Create the streams, bucket and durable consumers Tether needs; safe to run at every start.

Each one is looked up first and created only when it is missing, so a process whose NATS
user may only read stream metadata (a worker, an approver) connects to what the engine
provisioned without needing the right to create or change streams. Only the engine service
(``update=True``) changes an existing stream, and only when it differs from its settings.
A request the NATS user may not make fails at once, named (see ``tether.engine.permissions``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from tether.engine import wire
from tether.engine.config import Settings
from tether.engine.permissions import NatsPermissionError, PermissionWatch
from tether.engine.subjects import Names

log = logging.getLogger("tether.provision")

T = TypeVar("T")


class ProvisionError(RuntimeError):
    """A stream, bucket or consumer Tether needs is missing or unusable, and why."""


async def _guarded(watch: PermissionWatch | None, subject: str, operation: Awaitable[T]) -> T:
    if watch is None:
        return await operation
    return await watch.guard(subject, operation)


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
            republish=RePublish(src=names.stored_runs_source, dest=names.stored_runs_destination),
            **common,
        ),
        # Pushed events: anonymous ones and those of approver identities, each identity on
        # its own subjects; their sequence is the position waits match from. Kept forever
        # unless TETHER_EVENTS_MAX_AGE_S says otherwise (the duplicate window must fit).
        StreamConfig(
            name=names.events_stream,
            subjects=[names.events_all, names.from_all],
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


_STREAM_FIELDS = (
    "subjects",
    "retention",
    "storage",
    "num_replicas",
    "deny_delete",
    "deny_purge",
    "allow_direct",
    "duplicate_window",
    "republish",
    "max_age",
    "max_msg_size",
    "discard",
)
_CONSUMER_FIELDS = (
    "ack_policy",
    "deliver_policy",
    "ack_wait",
    "max_ack_pending",
    "max_waiting",
)


# Fields a stream can do without: when the engine may not bring them to these settings, it
# starts anyway (the run log's republishing of stored events, added by a later version).
_OPTIONAL = ("republish",)

# Fields whose unset value (None) is itself the setting, so it is compared too: an age limit
# dropped from the settings must be dropped from the stream.
_CLEARABLE = ("max_age",)


def _norm(value: Any) -> Any:
    """Compare what was asked with what the server reports: unset, zero and -1 (the
    server's "no limit") alike, lists as sets, enums by value, durations to the ms."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list):
        return tuple(sorted(value)) or None
    if isinstance(value, float):
        value = round(value, 3)
    return None if value in (-1, 0, False) else value


def _differences(wanted: Any, actual: Any, fields: tuple[str, ...]) -> list[str]:
    """The fields this process sets whose value on the server differs."""
    out = []
    for name in fields:
        if getattr(wanted, name) is None and name not in _CLEARABLE:
            continue  # left to the server's default
        want, have = _norm(getattr(wanted, name)), _norm(getattr(actual, name))
        if want != have:
            out.append(f"{name} {have!r} -> {want!r}")
    return out


async def _stream_info(
    js: JetStreamContext, name: str, watch: PermissionWatch | None
) -> StreamConfig | None:
    """The stream's configuration, or None when it does not exist."""
    try:
        try:
            info = await _guarded(watch, wire.stream_info(name), js.stream_info(name))
        except TimeoutError:
            # Once more: a stream another process has just created on a cluster may not
            # answer until its replicas have elected a leader.
            log.info("stream lookup timed out; trying once more", extra={"stream": name})
            info = await _guarded(watch, wire.stream_info(name), js.stream_info(name))
    except NotFoundError:
        return None
    except NatsPermissionError as exc:
        if exc.inbox is not None:
            raise ProvisionError(str(exc)) from None
        raise ProvisionError(
            f"these NATS credentials may not look up stream {name} "
            f"($JS.API.STREAM.INFO.{name} is denied): every Tether process needs it at "
            "connect; check the user's permissions and TETHER_NAMESPACE (docs/security.md)"
        ) from None
    except nats.errors.NoRespondersError:
        raise ProvisionError(
            f"no JetStream answered for stream {name}: enable JetStream on the server "
            "(nats-server -js) and for this user's account"
        ) from None
    except TimeoutError:
        raise ProvisionError(
            f"JetStream did not answer a lookup of stream {name}: either these NATS "
            f"credentials lack permission for $JS.API.STREAM.INFO.{name} (check the user's "
            "permissions, docs/security.md), or JetStream is unavailable (no leader yet)"
        ) from None
    return info.config


async def _create(
    js: JetStreamContext, name: str, operation: Awaitable[T], watch: PermissionWatch | None
) -> T | None:
    """Create a missing stream; None if another process created it meanwhile."""
    try:
        return await _guarded(watch, wire.stream_create(name), operation)
    except APIError as exc:
        if exc.err_code == wire.STREAM_NAME_IN_USE:
            return None
        raise
    except (NatsPermissionError, TimeoutError):
        raise ProvisionError(
            f"stream {name} does not exist and these NATS credentials may not create it: "
            "start `tether serve` (the engine user) first so that it provisions the streams, "
            "and check that every process uses the same TETHER_NAMESPACE"
        ) from None


async def _ensure_stream(
    js: JetStreamContext, config: StreamConfig, update: bool, watch: PermissionWatch | None
) -> StreamConfig:
    """Create or update the stream as ``config`` says; the configuration it then has."""
    name = str(config.name)
    actual = await _stream_info(js, name, watch)
    if actual is None:
        await _create(js, name, js.add_stream(config), watch)
        return config
    differences = _differences(config, actual, _STREAM_FIELDS)
    if not differences:
        return config
    if not update:
        log.warning(
            "stream exists with other settings; leaving it as it is (tether serve updates it)",
            extra={"stream": name, "differences": differences},
        )
        return actual
    try:
        await _guarded(watch, wire.stream_update(name), js.update_stream(config))
    except (NatsPermissionError, TimeoutError):
        required = tuple(field for field in _STREAM_FIELDS if field not in _OPTIONAL)
        if not _differences(config, actual, required):
            log.warning(
                "stream differs only in what speeds Tether up, and these NATS credentials "
                "may not update it: apply the change once with the operator's credentials "
                "(`tether serve` as tether-operator); until then workers resume runs when "
                "their dispatch comes and clients read runs on a backoff",
                extra={"stream": name, "differences": differences},
            )
            return actual
        raise ProvisionError(
            f"stream {name} differs from these settings ({'; '.join(differences)}) and these "
            "NATS credentials may not update it: apply the change once with the operator's "
            "credentials (`tether serve` as tether-operator), or align the settings"
        ) from None
    log.info("stream updated", extra={"stream": name, "differences": differences})
    return config


@dataclass(frozen=True, slots=True)
class Provisioned:
    deadlines: KeyValue
    # Does the run log republish its events once stored (``Names.stored_runs_*``)? One made
    # by an older version that the engine may not update does not.
    stores_notices: bool


async def ensure_streams(
    js: JetStreamContext,
    settings: Settings,
    *,
    update: bool,
    watch: PermissionWatch | None = None,
) -> Provisioned:
    """Create what is missing; the deadlines bucket, and whether the run log republishes.
    Only the engine service (``update=True``) changes existing streams; a worker or client
    whose settings differ leaves them alone, so one misconfigured process cannot, say, drop
    a cluster's streams to one replica. ``watch`` turns a denied request into an immediate,
    named error."""
    names = settings.names
    stores_notices = False
    for config in stream_configs(settings):
        applied = await _ensure_stream(js, config, update, watch)
        if config.name == names.runs_stream:
            stores_notices = _republishes_stored(applied, names)
    # A deadline is removed with a purge marker that expires by itself (DEADLINE_MARKER_TTL_S),
    # so the bucket holds what is due, not one marker per deadline ever set: a timer that
    # starts reads what is open now.
    deadlines = await ensure_bucket(
        js, settings, names.deadlines_bucket, watch, marker_ttl_s=DEADLINE_MARKER_TTL_S
    )
    return Provisioned(deadlines, stores_notices)


def _republishes_stored(config: StreamConfig, names: Names) -> bool:
    republish = config.republish
    return (
        republish is not None
        and republish.src == names.stored_runs_source
        and republish.dest == names.stored_runs_destination
    )


# How long the marker of a removed deadline stays: every timer following the bucket live
# sees it at once; one that reconnects after it expired fires that deadline, and the engine
# finds nothing to do. Short, so that start-up reads what is due, not recent history.
DEADLINE_MARKER_TTL_S = 60


async def ensure_bucket(
    js: JetStreamContext,
    settings: Settings,
    bucket: str,
    watch: PermissionWatch | None = None,
    *,
    marker_ttl_s: int | None = None,
) -> KeyValue:
    """A key-value bucket (one value per key), created when missing. ``marker_ttl_s`` lets
    purge markers carry a TTL (``KeyValue.purge(key, msg_ttl=...)``)."""
    stream = f"KV_{bucket}"
    actual = await _stream_info(js, stream, watch)
    if actual is None:
        created = await _create(
            js,
            stream,
            js.create_key_value(
                KeyValueConfig(
                    bucket=bucket,
                    history=1,
                    storage=StorageType.FILE,
                    replicas=settings.replicas,
                    direct=True,
                    limit_marker_ttl=marker_ttl_s,
                )
            ),
            watch,
        )
        if created is not None:
            return created
        actual = await _stream_info(js, stream, watch)
    # Built from the lookup instead of js.key_value(), which would ask for it again.
    direct = bool(actual.allow_direct) if actual is not None else True
    return KeyValue(name=bucket, stream=stream, pre=bucket_prefix(bucket), js=js, direct=direct)


def bucket_prefix(bucket: str) -> str:
    """The subject prefix of a key-value bucket's keys."""
    return f"$KV.{bucket}."


async def ensure_pull_consumer(
    js: JetStreamContext,
    stream: str,
    durable: str,
    *,
    filter_subjects: list[str],
    ack_wait_s: float = 30.0,
    max_ack_pending: int = 20_000,
    watch: PermissionWatch | None = None,
) -> None:
    """Create a durable pull consumer, or bring an existing one to this configuration.

    An existing consumer that already matches is only looked up, so a worker whose user may
    read its consumer's info but not change it starts as well."""
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
    info_subject = wire.consumer_info(stream, durable)
    with contextlib.suppress(NotFoundError, NatsPermissionError, TimeoutError):
        actual = (await _guarded(watch, info_subject, js.consumer_info(stream, durable))).config
        have = actual.filter_subjects or ([actual.filter_subject] if actual.filter_subject else [])
        if sorted(have) == sorted(filter_subjects) and not _differences(
            config, actual, _CONSUMER_FIELDS
        ):
            return
    create_subject = wire.consumer_create(stream, durable)
    try:
        try:
            await _guarded(watch, create_subject, js.add_consumer(stream, config))
        except BadRequestError as exc:
            if exc.err_code != wire.CONSUMER_EXISTS:
                raise
            log.info("updating consumer", extra={"stream": stream, "consumer": durable})
            await _guarded(watch, create_subject, js.add_consumer(stream, config))
    except (NatsPermissionError, TimeoutError):
        raise ProvisionError(
            f"consumer {durable} on stream {stream} is missing or differs from these settings, "
            f"and these NATS credentials may not create or update it ({create_subject}): check "
            "the user's permissions (a worker user may manage only its own tasks' consumers)"
        ) from None
