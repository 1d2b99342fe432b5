"""The NATS wire vocabulary Tether relies on: header names, JetStream error codes and API
subjects, named once so a reader can audit what Tether says to the server."""

from __future__ import annotations

# -- headers ---------------------------------------------------------------------------------
MSG_ID = "Nats-Msg-Id"  # dedupe within the stream's duplicate window
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"  # OCC
EXPECTED_LAST_SUBJECT_SEQ_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"  # its scope
KV_OPERATION = "KV-Operation"  # DEL or PURGE on a key-value delete or purge
KV_PURGE = "PURGE"
KV_REMOVALS = ("DEL", KV_PURGE)
ROLLUP = "Nats-Rollup"
ROLLUP_SUBJECT = "sub"  # the message replaces every earlier one of its subject
MSG_TTL = "Nats-TTL"  # seconds the message is kept
STATUS = "Status"  # inline status of a control message (204, 404, 408, ...)
# The status when nobody answered: no stream takes a publish, or a stream has no leader.
STATUS_UNAVAILABLE = "503"
DESCRIPTION = "Description"
PENDING_MESSAGES = "Nats-Pending-Messages"  # what a pull request will no longer get
NUM_PENDING = "Nats-Num-Pending"  # direct get: messages left after this batch
SEQUENCE = "Nats-Sequence"  # direct get and republished: the message's stream sequence
SUBJECT = "Nats-Subject"  # direct get and republished: the subject it was stored on
TIME_STAMP = "Nats-Time-Stamp"
# Stored with the engine's resolution of a wait: the run's task, so that its bookkeeping can
# dispatch the run again without reading its log.
TASK = "Tether-Task"
# Stored by the engine with an event it knows the run takes (decided on a read of the log,
# or resolving a wait the run is known to have taken): see tether.engine.taken.
TAKEN = "Tether-Taken"

# -- JetStream API error codes ---------------------------------------------------------------
# 10071: wrong last sequence; 10164: the same check on the subject-filter form.
OCC_CONFLICT_CODES = (10071, 10164)
STREAM_NAME_IN_USE = 10058
CONSUMER_EXISTS = 10148


# -- JetStream API subjects ------------------------------------------------------------------
def stream_info(stream: str) -> str:
    return f"$JS.API.STREAM.INFO.{stream}"


def stream_create(stream: str) -> str:
    return f"$JS.API.STREAM.CREATE.{stream}"


def stream_update(stream: str) -> str:
    return f"$JS.API.STREAM.UPDATE.{stream}"


def direct_get(stream: str) -> str:
    return f"$JS.API.DIRECT.GET.{stream}"


def consumer_info(stream: str, consumer: str) -> str:
    return f"$JS.API.CONSUMER.INFO.{stream}.{consumer}"


def consumer_create(stream: str, consumer: str) -> str:
    return f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{consumer}"


def consumer_next(stream: str, consumer: str) -> str:
    return f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"


def kv_stream(bucket: str) -> str:
    """The stream behind a key-value bucket."""
    return f"KV_{bucket}"


def kv_subject_prefix(bucket: str) -> str:
    """Keys of a bucket are subjects under this prefix."""
    return f"$KV.{bucket}."
