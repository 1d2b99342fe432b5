"""The namespace's fixed settings, kept in its config bucket: today the partition count.

The count is chosen once, when the namespace is first provisioned, because it is part of
every run's subjects: a run's log could not be found again under another count. Every
process reads it at connect; `tether serve` refuses to start when asked for another.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tether.engine.config import Settings
from tether.engine.ids import DEFAULT_PARTITIONS, check_partitions
from tether.engine.nats_io import TRANSIENT_NATS_ERRORS, retry_transient
from tether.engine.provision import ProvisionError

log = logging.getLogger("tether.provision")

PARTITIONS_KEY = "partitions"


class PartitionCountMismatchError(ProvisionError):
    """This process was asked for another partition count than the namespace has."""


# A bucket another process has just created on a cluster may not answer reads at once
# (no responders while its replicas start): the first read is tried for this long.
FIRST_READ_WITHIN_S = 15.0


async def _stored_partitions(config: KeyValue, bucket: str) -> int | None:
    async def read() -> KeyValue.Entry | None:
        try:
            return await config.get(PARTITIONS_KEY)
        except KeyNotFoundError:
            return None

    try:
        entry = await retry_transient(
            read, within_s=FIRST_READ_WITHIN_S, what="reading the partition count"
        )
    except TRANSIENT_NATS_ERRORS as exc:
        raise ProvisionError(
            f"the namespace's partition count in bucket {bucket} could not be read "
            f"within {FIRST_READ_WITHIN_S:g}s ({exc!r}): check that JetStream has a "
            f"leader for it (`nats stream info KV_{bucket}`)"
        ) from exc
    if entry is None:
        return None
    if entry.value is None:
        return None
    try:
        return check_partitions(int(entry.value))
    except ValueError as exc:
        raise ProvisionError(
            f"the namespace's partition count in bucket {bucket} is unusable "
            f"({entry.value!r}): {exc}"
        ) from None


async def namespace_partitions(js: JetStreamContext, settings: Settings, config: KeyValue) -> int:
    """The namespace's partition count, recorded now if it is new (``settings.partitions``,
    else the default). Raises when ``settings.partitions`` asks for another count."""
    bucket = settings.names.config_bucket
    stored = await _stored_partitions(config, bucket)
    if stored is None:
        info = await js.stream_info(settings.names.runs_stream)
        if info.state.messages:
            raise ProvisionError(
                f"stream {settings.names.runs_stream} holds {info.state.messages} run events "
                "but the namespace has no partition count: it was created by a Tether without "
                "partitions, whose subjects this one cannot read. Use a new TETHER_NAMESPACE "
                "(or, for a development store, delete the old one)"
            )
        wanted = check_partitions(settings.partitions or DEFAULT_PARTITIONS)
        try:
            await config.create(PARTITIONS_KEY, str(wanted).encode())
            log.info("namespace provisioned", extra={"partitions": wanted})
            return wanted
        except KeyWrongLastSequenceError:
            stored = await _stored_partitions(config, bucket)  # another process recorded it first
            if stored is None:
                raise ProvisionError("the namespace's partition count vanished") from None
    if settings.partitions is not None and settings.partitions != stored:
        raise PartitionCountMismatchError(
            f"namespace {settings.namespace!r} has {stored} partitions, and this process was "
            f"asked for {settings.partitions} (TETHER_PARTITIONS / --partitions). The count is "
            f"fixed when a namespace is created: drop the setting, set it to {stored}, or use "
            "a new TETHER_NAMESPACE"
        )
    return stored
