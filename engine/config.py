"""Settings shared by every Tether process, read from arguments or ``TETHER_*`` variables."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from datetime import timedelta

from tether.engine.ids import DEFAULT_PARTITIONS
from tether.engine.subjects import Names

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_EXECUTION_TIMEOUT = timedelta(hours=24)
# A failed attempt is retried after initial * factor ** (n - 1), capped at max.
DEFAULT_BACKOFF_INITIAL = timedelta(seconds=1)
DEFAULT_BACKOFF_FACTOR = 2.0
DEFAULT_BACKOFF_MAX = timedelta(minutes=5)
# nats-py's own default. Replies (PubAcks, JetStream API answers, pulled and pushed
# deliveries) arrive on subjects under the prefix, so NATS permissions that give each user
# only its own prefix (`_INBOX_alice.>`) keep one identity from reading another's replies.
DEFAULT_INBOX_PREFIX = "_INBOX"
_INBOX_PREFIX_OK = re.compile(r"^[A-Za-z0-9_\-:]+(\.[A-Za-z0-9_\-:]+)*$")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not an integer") from exc


@dataclass(frozen=True, slots=True)
class Settings:
    nats_url: str = DEFAULT_NATS_URL
    namespace: str = "tether"
    replicas: int = 1
    # Largest event payload accepted, in bytes. Bigger pushes are refused by the SDK and by
    # the server (stream max_msg_size), so an oversized event never reaches the matcher.
    max_event_bytes: int = 256 * 1024
    # How long a worker may hold a task message without progress before it is redelivered.
    task_ack_wait_s: float = 30.0
    # How long a command or run-log message stays with an engine service that went silent
    # (crashed) before another serve process gets it.
    engine_ack_wait_s: float = 10.0
    # How long pushed events are kept, in seconds; 0 keeps them forever. Make it longer than
    # any lookback and than any outage of `tether serve` (its matcher replays the events
    # stored since the oldest open wait began).
    events_max_age_s: float = 0.0
    # How long a first connection to NATS is tried before giving up with a clear error.
    connect_timeout_s: float = 5.0
    # Subject prefix of this process's reply inboxes (TETHER_INBOX_PREFIX).
    inbox_prefix: str = DEFAULT_INBOX_PREFIX
    # Partitions of a namespace provisioned by this process (TETHER_PARTITIONS). None: the
    # namespace's own count, or the default for a new one. The count is fixed when the
    # namespace is first provisioned; a `tether serve` asked for another refuses to start.
    partitions: int | None = None
    names: Names = field(init=False)

    def __post_init__(self) -> None:
        names = Names(self.namespace, self.partitions or DEFAULT_PARTITIONS)
        object.__setattr__(self, "names", names)
        if not _INBOX_PREFIX_OK.match(self.inbox_prefix):
            raise ValueError(
                f"invalid inbox prefix {self.inbox_prefix!r} (TETHER_INBOX_PREFIX): use "
                "subject tokens of letters, digits, '_', '-' or ':' separated by dots, with no "
                "wildcards, e.g. _INBOX_alice"
            )

    def with_partitions(self, partitions: int) -> Settings:
        """These settings for a namespace of ``partitions`` (as read from its config)."""
        return self if self.partitions == partitions else replace(self, partitions=partitions)

    @classmethod
    def from_env(cls, nats_url: str | None = None, namespace: str | None = None) -> Settings:
        return cls(
            nats_url=nats_url or os.environ.get("TETHER_NATS_URL") or DEFAULT_NATS_URL,
            namespace=namespace or os.environ.get("TETHER_NAMESPACE") or "tether",
            replicas=_env_int("TETHER_REPLICAS", 1),
            max_event_bytes=_env_int("TETHER_MAX_EVENT_BYTES", 256 * 1024),
            task_ack_wait_s=float(_env_int("TETHER_TASK_ACK_WAIT_S", 30)),
            engine_ack_wait_s=float(_env_int("TETHER_ENGINE_ACK_WAIT_S", 10)),
            events_max_age_s=float(_env_int("TETHER_EVENTS_MAX_AGE_S", 0)),
            inbox_prefix=os.environ.get("TETHER_INBOX_PREFIX") or DEFAULT_INBOX_PREFIX,
            connect_timeout_s=float(_env_int("TETHER_CONNECT_TIMEOUT_S", 5)),
            partitions=_env_int("TETHER_PARTITIONS", 0) or None,
        )
