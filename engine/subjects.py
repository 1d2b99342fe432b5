"""Subject, stream and bucket names, all derived from one namespace prefix.

Keeping every name in one place lets several Tether installations share a NATS
account (``TETHER_NAMESPACE``) and keeps the wire layout easy to audit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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


def check_run_id(run_id: str) -> str:
    """Run ids appear in subjects and KV keys, which allow fewer characters than tokens."""
    if not _RUN_ID_OK.match(run_id):
        raise ValueError(f"invalid run id {run_id!r}: use 1-128 letters, digits, '_' or '-'")
    return run_id


def check_event_key(key: str) -> str:
    """Event keys may contain dots (they become several subject tokens), never wildcards."""
    if not _KEY_OK.match(key):
        raise ValueError(
            f"invalid event key {key!r}: use letters, digits, '_', '-', ':' and '.' "
            "(no spaces, wildcards or empty tokens)"
        )
    return key


@dataclass(frozen=True, slots=True)
class Names:
    """Every NATS name Tether uses, for one namespace."""

    namespace: str = "tether"

    def __post_init__(self) -> None:
        check_token("namespace", self.namespace)

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
    def _upper(self) -> str:
        return self.namespace.upper().replace("-", "_").replace(":", "_")

    # subjects
    def run_subject(self, run_id: str, token: str) -> str:
        return f"{self.namespace}.runs.{run_id}.{token}"

    def run_filter(self, run_id: str) -> str:
        return f"{self.namespace}.runs.{run_id}.>"

    def runs_token_filter(self, token: str) -> str:
        return f"{self.namespace}.runs.*.{token}"

    @property
    def runs_all(self) -> str:
        return f"{self.namespace}.runs.>"

    def event_subject(self, key: str) -> str:
        return f"{self.namespace}.events.{key}"

    @property
    def events_all(self) -> str:
        return f"{self.namespace}.events.>"

    @property
    def events_prefix(self) -> str:
        return f"{self.namespace}.events."

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
        return f"{self.namespace}.cmd.{kind}.{run_id}"

    @property
    def commands_all(self) -> str:
        return f"{self.namespace}.cmd.>"

    def task_consumer(self, task_name: str) -> str:
        return f"{self._upper}_TASK_{task_name.replace(':', '_')}"

    @property
    def engine_consumer(self) -> str:
        return f"{self._upper}_ENGINE"

    @property
    def bookkeeper_consumer(self) -> str:
        return f"{self._upper}_BOOKKEEPER"
