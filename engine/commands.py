"""Commands to the engine service (``<ns>.cmd.<partition>.<kind>.<run_id>``) and their wire
form."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tether.engine import codec, ids
from tether.engine.decide import (
    CancelRun,
    Command,
    ExpireRun,
    ExpireSchedule,
    ExpireWait,
    ResolveWait,
)

CommandKind = Literal["resume", "expire_wait", "expire_run", "expire_schedule", "cancel", "retry"]


# What an execution timeout's reason says of its scope: the engine's (which applies a
# deadline's command) and a worker's (whose attempt runs past it) both end with it.
EXECUTION_TIMEOUT_SCOPE = "(it covers the whole run, waits included)"


class CommandMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: CommandKind
    run_id: str
    task: str | None = None
    wait_id: str | None = None
    # log sequence of the wait_started event: resolving with it as the expected sequence
    # succeeds in one write when nothing else happened to the run since
    wait_seq: int | None = None
    timer_key: str | None = None  # deadline key to remove once handled
    condition_id: str | None = None  # resume: which condition of the wait fired
    condition_key: str | None = None
    single_clause: bool = False  # resume: the wait has one clause, so this completes it
    retry_seq: int | None = None  # retry: the attempt_failed event this retry follows
    event_key: str | None = None
    event_seq: int | None = None
    event_id: str | None = None
    payload: dict[str, Any] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    reason: str = ""

    def msg_id(self) -> str:
        """Deterministic, so a projection that publishes the same command twice is harmless."""
        if self.kind == "resume":
            return ids.resume_msg_id(self.wait_id, self.wait_seq, self.condition_id)
        if self.kind == "expire_wait":
            return ids.expire_wait_msg_id(self.wait_id, self.wait_seq)
        if self.kind == "retry":
            return ids.retry_msg_id(self.run_id, self.retry_seq)
        return ids.run_command_msg_id(self.kind, self.run_id)

    def to_state_command(self) -> Command | None:
        """The state-machine command, or None for kinds handled outside it (retry)."""
        if self.kind == "retry":
            return None
        if self.kind == "resume":
            return ResolveWait(
                wait_id=str(self.wait_id),
                condition_id=str(self.condition_id),
                condition_key=str(self.condition_key),
                event_key=self.event_key,
                event_seq=self.event_seq,
                event_id=self.event_id,
                payload=self.payload,
                metadata=dict(self.metadata),
                wait_seq=self.wait_seq,
            )
        if self.kind == "expire_wait":
            return ExpireWait(wait_id=str(self.wait_id), wait_seq=self.wait_seq)
        if self.kind == "expire_run":
            return ExpireRun(
                reason=self.reason or f"execution timeout passed {EXECUTION_TIMEOUT_SCOPE}"
            )
        if self.kind == "expire_schedule":
            return ExpireSchedule(reason=self.reason or "no worker started the run in time")
        return CancelRun(reason=self.reason or "cancelled")


class CommandDecodeError(ValueError):
    pass


def encode(command: CommandMessage) -> bytes:
    return codec.dumps(command.model_dump(mode="json", exclude_defaults=True))


def decode(data: bytes) -> CommandMessage:
    try:
        return CommandMessage.model_validate_json(data)
    except ValidationError as exc:
        raise CommandDecodeError(f"malformed engine command: {exc}") from exc
