"""Subject, stream and bucket names, all derived from one namespace prefix.

Keeping every name in one place lets several Tether installations share a NATS
account (``TETHER_NAMESPACE``) and keeps the wire layout easy to audit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tether.engine.ids import DEFAULT_PARTITIONS, check_partitions, partition_of

_TOKEN_OK = re.compile(r"^[A-Za-z0-9_\-:]+$")
_KEY_OK = re.compile(r"^[A-Za-z0-9_\-:]+(\.[A-Za-z0-9_\-:]+)*$")


def check_token(kind: str, value: str) -> str:
    """Return ``value`` if it is a single NATS subject token, else raise ValueError."""
    if not _TOKEN_OK.match(value):
        raise ValueError(
            f"invalid {kind} {value!r}: use letters, digits, '_', '-' or ':' only "
            "(no dots, spaces or wildcards)"
        )
    return value


_RUN_ID_OK = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")
# A subject must fit in one NATS control line (4 KB by default, shared with the reply
# subject and headers' length): a longer key made the server drop the connection.
MAX_EVENT_KEY_LENGTH = 256
MAX_IDENTITY_LENGTH = 64


def is_token(value: str) -> bool:
    """Can ``value`` stand as one subject token (see ``check_token``)?"""
    return bool(_TOKEN_OK.match(value))


def check_run_id(run_id: str) -> str:
    """Run ids appear in subjects and KV keys, which allow fewer characters than tokens."""
    if not _RUN_ID_OK.match(run_id):
        raise ValueError(f"invalid run id {run_id!r}: use 1-128 letters, digits, '_' or '-'")
    return run_id


def run_subject_parts(subject: str) -> tuple[str, str]:
    """(run id, event token) of a run-log subject, ``<ns>.runs.<run_id>.<token>[.<p>]``
    (namespaces and run ids hold no dots)."""
    parts = subject.split(".")
    return parts[2], parts[3]


def check_event_key(key: str) -> str:
    """Event keys may contain dots (they become several subject tokens), never wildcards."""
    if len(key) > MAX_EVENT_KEY_LENGTH:
        raise ValueError(
            f"invalid event key {key[:40]!r}...: {len(key)} characters, over the limit of "
            f"{MAX_EVENT_KEY_LENGTH}; use a short key and put details in the payload"
        )
    if not _KEY_OK.match(key):
        raise ValueError(
            f"invalid event key {key!r}: use letters, digits, '_', '-', ':' and '.' "
            "(no spaces, wildcards or empty tokens)"
        )
    return key


def check_identity(identity: str) -> str:
    """An approver identity names its own subject space (``<ns>.from.<identity>.<key>``),
    so it is one subject token of bounded length."""
    if len(identity) > MAX_IDENTITY_LENGTH:
        raise ValueError(
            f"invalid approver identity {identity[:40]!r}: over {MAX_IDENTITY_LENGTH} characters"
        )
    return check_token("approver identity", identity)


@dataclass(frozen=True, slots=True)
class Names:
    """Every NATS name Tether uses, for one namespace and its partition count.

    A run's partition is in its subjects (``<ns>.runs.<run_id>.<event>.<p>``, last, so the
    run's own prefix and any client's ``<ns>.runs.*.<event>.>`` stay as they were;
    ``<ns>.cmd.<p>.<kind>.<run_id>``), so one consumer can take one partition's work."""

    namespace: str = "tether"
    partitions: int = DEFAULT_PARTITIONS

    def __post_init__(self) -> None:
        check_token("namespace", self.namespace)
        check_partitions(self.partitions)

    def partition(self, run_id: str) -> int:
        return partition_of(run_id, self.partitions)

    # streams and buckets
    @property
    def runs_stream(self) -> str:
        return f"{self._upper}_RUNS"

    @property
    def events_stream(self) -> str:
        return f"{self._upper}_EVENTS"

    @property
    def tasks_stream(self) -> str:
        return f"{self._upper}_TASKS"

    @property
    def commands_stream(self) -> str:
        return f"{self._upper}_CMDS"

    @property
    def deadlines_bucket(self) -> str:
        return f"{self._upper}_DEADLINES"

    @property
    def config_bucket(self) -> str:
        """The namespace's settings fixed at creation (the partition count)."""
        return f"{self._upper}_CONFIG"

    @property
    def leases_bucket(self) -> str:
        """Which ``tether serve`` owns which partition, and who is alive."""
        return f"{self._upper}_LEASES"

    @property
    def checkpoints_bucket(self) -> str:
        """Projection checkpoints: what was open at a stream position, to start from."""
        return f"{self._upper}_CHECKPOINTS"

    @property
    def _upper(self) -> str:
        return self.namespace.upper().replace("-", "_").replace(":", "_")

    # subjects
    def run_subject(self, run_id: str, token: str) -> str:
        return f"{self.namespace}.runs.{run_id}.{token}.{self.partition(run_id)}"

    def run_template(self, token: str) -> str:
        """A run subject with placeholders, for span names."""
        return f"{self.namespace}.runs.{{run_id}}.{token}.{{partition}}"

    def run_filter(self, run_id: str) -> str:
        return f"{self.namespace}.runs.{run_id}.>"

    def runs_token_filter(self, token: str) -> str:
        """Every run's ``token`` events, in every partition."""
        return f"{self.namespace}.runs.*.{token}.*"

    def partition_runs(self, partition: int) -> str:
        """Every run event of one partition."""
        return f"{self.namespace}.runs.*.*.{partition}"

    @property
    def runs_all(self) -> str:
        return f"{self.namespace}.runs.>"

    # Every run event, republished by the run log once stored (with its stream sequence and
    # the headers stored beside it) on ``<ns>.stored.<run_id>.<token>.<partition>``: only
    # the server writes there, and only what the log holds. The worker that suspended a run
    # resumes it from its stored resolution (tether.runtime.early_resume); clients hear runs
    # end (tether.terminal_watch).
    @property
    def stored_runs_source(self) -> str:
        return f"{self.namespace}.runs.*.*.*"

    @property
    def stored_runs_destination(self) -> str:
        """``<ns>.stored.<run_id>.<token>.<partition>``, as a stream's subject transform."""
        wildcards = ".".join(f"{{{{wildcard({n})}}}}" for n in (1, 2, 3))
        return f"{self.namespace}.stored.{wildcards}"

    def run_subject_of_stored(self, subject: str) -> str:
        """The run-log subject an event republished on ``subject`` was stored on."""
        return f"{self.namespace}.runs.{subject.split('.', 2)[2]}"

    def stored_token_filter(self, token: str) -> str:
        """Every run's ``token`` events as republished once stored, in every partition."""
        return f"{self.namespace}.stored.*.{token}.*"

    def event_subject(self, key: str) -> str:
        return f"{self.namespace}.events.{key}"

    @property
    def events_all(self) -> str:
        return f"{self.namespace}.events.>"

    @property
    def events_prefix(self) -> str:
        return f"{self.namespace}.events."

    def from_subject(self, identity: str, key: str) -> str:
        """Where ``identity`` pushes events on ``key``. NATS permissions give each approver
        identity only its own ``<ns>.from.<identity>.>``, so the matcher can record the
        identity from the subject: a pusher cannot claim to be someone else."""
        return f"{self.namespace}.from.{identity}.{key}"

    @property
    def from_all(self) -> str:
        return f"{self.namespace}.from.>"

    @property
    def from_prefix(self) -> str:
        return f"{self.namespace}.from."

    def event_key_filters(self, key: str) -> list[str]:
        """Subject filters holding every event pushed on ``key``, by anyone."""
        return [self.event_subject(key), f"{self.from_prefix}*.{key}"]

    def parse_event_subject(self, subject: str) -> tuple[str, str | None]:
        """(event key, pushing identity or None) of a subject in the events stream."""
        if subject.startswith(self.from_prefix):
            identity, _, key = subject[len(self.from_prefix) :].partition(".")
            return key, identity
        return subject[len(self.events_prefix) :], None

    @property
    def rejected_stream(self) -> str:
        return f"{self._upper}_REJECTED"

    def rejected_subject(self, key: str) -> str:
        return f"{self.namespace}.rejected.{key}"

    @property
    def rejected_all(self) -> str:
        return f"{self.namespace}.rejected.>"

    def task_subject(self, task_name: str) -> str:
        return f"{self.namespace}.tasks.{task_name}"

    @property
    def tasks_all(self) -> str:
        return f"{self.namespace}.tasks.>"

    def command_subject(self, kind: str, run_id: str) -> str:
        return f"{self.namespace}.cmd.{self.partition(run_id)}.{kind}.{run_id}"

    def command_template(self, kind: str) -> str:
        """The command subject with placeholders, for span names."""
        return f"{self.namespace}.cmd.{{partition}}.{kind}.{{run_id}}"

    def partition_commands(self, partition: int) -> str:
        return f"{self.namespace}.cmd.{partition}.>"

    @property
    def commands_all(self) -> str:
        return f"{self.namespace}.cmd.>"

    def task_consumer(self, task_name: str) -> str:
        return f"{self._upper}_TASK_{task_name.replace(':', '_')}"

    def engine_consumer(self, partition: int) -> str:
        return f"{self._upper}_ENGINE_P{partition}"

    def bookkeeper_consumer(self, partition: int) -> str:
        return f"{self._upper}_BOOKKEEPER_P{partition}"
