"""One run as an inbox and a run list show it: the run folded from its log with the engine's
own state machine, plus what the log says beyond that state.

For an open wait a person may decide (``PendingWait``) it keeps the run, the task, the event
key and expression a decision must match, the proposed action (the wait's explicit
``description``/``details``, else the output of the last step before the wait), since when
it waits, and its deadlines; for the run, its latest events (``EventBrief``) and how its
latest wait was decided (``DecisionNote``). The run index keeps one ``RunView`` per run;
``fold_view`` builds one over a freshly read log.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tether.engine import events as ev
from tether.engine.state import RunState, StepRecord, WaitRecord, evolve

# Event keys under this prefix are Tether's own (child-run results): no person decides them.
INTERNAL_KEY_PREFIX = "tether:"


def decision_expression(run_id: str) -> str:
    """The expression of the decision convention: approve/reject push a payload it accepts."""
    return f"input.runId == '{run_id}'"


def follows_convention(expression: str | None, run_id: str) -> bool:
    """True iff ``expression`` is ``input.runId == '<run_id>'`` (either side, either quote).

    A textual check: it runs for every wait an inbox lists, where parsing CEL would cost
    about a millisecond each. An equivalent expression written differently is reported as
    not following the convention, which only adds a warning; approving still checks the
    real expression against the payload before pushing anything.
    """
    if not expression:
        return False
    found = _CONVENTION.fullmatch(expression.strip())
    return found is not None and (found["left"] or found["right"]) == run_id


_CONVENTION = re.compile(
    r"input\.runId\s*==\s*(?P<q1>['\"])(?P<left>[A-Za-z0-9_-]+)(?P=q1)"
    r"|(?P<q2>['\"])(?P<right>[A-Za-z0-9_-]+)(?P=q2)\s*==\s*input\.runId"
)


@dataclass(frozen=True, slots=True)
class EventBrief:
    """One run event, reduced to what a run list shows."""

    seq: int
    type: str
    at: float
    note: str


@dataclass(frozen=True, slots=True)
class PendingWait:
    """An open wait on a user event: what a person is asked to decide."""

    run_id: str
    task: str
    wait_id: str
    started_seq: int  # log sequence of the (latest) wait_started: names this registration
    event_key: str
    expression: str | None
    conventional: bool  # approve/reject will match: see ``follows_convention``
    other_conditions: int  # further clauses that must also be met before the run resumes
    label: str | None
    since: float
    deadline: float | None  # the wait's own timeout
    run_deadline: float  # the run's execution timeout
    description: str | None
    details: dict[str, Any] | None
    proposed_action: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class DecisionNote:
    """How the run's latest wait was decided, when it follows the decision convention
    (``{"decision": "approve" | "reject", "reason": ...}``) or expired."""

    outcome: str  # approved, rejected, expired
    by: str | None
    reason: str | None
    at: float


_OUTCOMES = {"approve": "approved", "reject": "rejected"}


def _decision(state: RunState, seq: int, event: ev.RunEvent) -> DecisionNote | None:
    """The decision ``event`` (stored at ``seq``) made, if the run took it as one."""
    if isinstance(event, ev.WaitSatisfied):
        record = state.wait(event.wait_id)
        payload = event.payload or {}
        outcome = _OUTCOMES.get(str(payload.get("decision")))
        if record is None or record.resolved_seq != seq or outcome is None:
            return None
        reason = payload.get("reason")
        approver = event.metadata.get("approver")
        return DecisionNote(
            outcome,
            str(approver) if approver else None,
            str(reason) if reason else None,
            event.at,
        )
    if isinstance(event, ev.WaitTimedOut):
        record = state.wait(event.wait_id)
        if record is not None and record.resolved_seq == seq:
            return DecisionNote("expired", None, None, event.at)
    return None


@dataclass(slots=True)
class _WaitNotes:
    """What the run log says about a wait beyond what the state machine keeps."""

    since: float
    description: str | None
    details: dict[str, Any] | None
    step: StepRecord | None  # the last step before the wait


def _note(event: ev.RunEvent) -> str:
    """A short human description of an event, for tables and timelines."""
    note = _what(event)
    if isinstance(event, ev.AttemptWrite) and event.worker:  # it began an attempt
        return f"{note} (began an attempt on {event.worker})" if note else f"on {event.worker}"
    return note


def _what(event: ev.RunEvent) -> str:
    match event:
        case ev.RunRequested():
            return f"task {event.task}"
        case ev.AttemptStarted():
            return f"attempt {event.attempt} on {event.worker}"
        case ev.StepRecorded():
            return f"step {event.name}"
        case ev.WaitStarted():
            text = f"waits for {event.event_key or event.label or 'conditions'}"
            return text + (f" (after {_ended(event.tasks)})" if event.tasks else "")
        case ev.TaskRecorded():
            text = f"task {event.task} {event.status}"
            if event.error is not None:
                return f"{text}: {event.error.type}: {event.error.message}"
            return f"{text}: {event.reason}" if event.reason else text
        case ev.WaitSatisfied():
            approver = event.metadata.get("approver")
            decision = (event.payload or {}).get("decision")
            text = f"{decision}" if isinstance(decision, str) else "event matched"
            return f"{text} by {approver}" if approver else text
        case ev.WaitTimedOut():
            return "wait timed out"
        case ev.RunFailed():
            return f"{event.error.type}: {event.error.message}"
        case ev.RunTimedOut() | ev.RunCancelled():
            return event.reason
        case ev.RunCompleted() if event.tasks:
            return f"after {_ended(event.tasks)}"
    return ""


def _ended(tasks: list[ev.TaskEnd]) -> str:
    """The workflow tasks a wait or a completion carries: ``draft completed, x skipped``."""
    return ", ".join(f"{end.task} {end.status}" for end in tasks)


class RunView:
    """One run folded from its log: state plus the notes an inbox needs. Used incrementally
    by the index and, over a freshly read log, for a single run."""

    def __init__(self, run_id: str, *, keep_events: int = 10, payloads: bool = True) -> None:
        self.state = RunState(run_id=run_id)
        self.created_at = 0.0
        self.updated_at = 0.0
        self.ended_seq = 0  # log sequence of the event that ended the run (0: not ended)
        # False: drop the run's input, output and metadata, which only its detail shows (the
        # detail is read from the log); a run list holds many views
        self._payloads = payloads
        self.recent: deque[EventBrief] = deque(maxlen=keep_events)
        self._notes: dict[str, _WaitNotes] = {}
        self._wait: PendingWait | None = None
        self._wait_known = True  # False: recompute ``wait`` on the next read
        self.decision: DecisionNote | None = None  # of the latest decided wait

    @property
    def run_id(self) -> str:
        return self.state.run_id

    def apply(self, seq: int, event: ev.RunEvent) -> None:
        state = self.state
        if isinstance(event, ev.WaitStarted) and not state.is_terminal:
            notes = self._notes.get(event.wait_id)
            if notes is None:  # a wait registered again (after a refused event) keeps its notes
                step = next(
                    (
                        r
                        for r in reversed(state.records)
                        if isinstance(r, StepRecord) and r.position < event.position
                    ),
                    None,
                )
                notes = _WaitNotes(event.at, event.description, event.details, step)
                self._notes[event.wait_id] = notes
            else:
                notes.description = event.description or notes.description
                notes.details = event.details or notes.details
        was_terminal = state.is_terminal
        evolve(state, event, seq)
        if state.is_terminal and not was_terminal:
            self.ended_seq = seq
        if not self._payloads:
            state.input = state.output = None
            if state.metadata:
                state.metadata = {}
        self.decision = _decision(state, seq, event) or self.decision
        if isinstance(event, ev.RunRequested):
            self.created_at = event.at
        self.updated_at = max(self.updated_at, event.at)
        self.recent.append(EventBrief(seq, event.type, event.at, _note(event)))
        self._wait_known = False
        if state.is_terminal:  # nothing changes a finished run: keep only its summary
            self._notes.clear()
            state.records.clear()

    @property
    def wait(self) -> PendingWait | None:
        """The open wait a person may decide, or None (no wait, or a sleep/child wait)."""
        if not self._wait_known:
            record = self.state.open_wait()
            self._wait = self._pending(record) if record is not None else None
            self._wait_known = True
        return self._wait

    def _pending(self, record: WaitRecord) -> PendingWait | None:
        open_clauses = [
            clause for clause in record.clauses if not any(spec.id in record.met for spec in clause)
        ]
        if record.clauses:
            specs = [s for clause in open_clauses for s in clause if s.kind == "event"]
            if not specs or specs[0].event_key is None:
                return None
            event_key, expression = specs[0].event_key, specs[0].expression
            others = len(open_clauses) - 1
        else:
            event_key, expression, others = record.event_key, record.expression, 0
        if not event_key or event_key.startswith(INTERNAL_KEY_PREFIX):
            return None
        notes = self._notes.get(record.wait_id) or _WaitNotes(0.0, None, None, None)
        return PendingWait(
            run_id=self.run_id,
            task=self.state.task,
            wait_id=record.wait_id,
            started_seq=record.started_seq,
            event_key=event_key,
            expression=expression,
            conventional=others == 0 and follows_convention(expression, self.run_id),
            other_conditions=others,
            label=record.label,
            since=notes.since,
            deadline=record.timeout_at,
            run_deadline=self.state.deadline,
            description=notes.description,
            details=notes.details,
            proposed_action=_proposed_action(notes),
        )


def _proposed_action(notes: _WaitNotes) -> dict[str, Any] | None:
    if notes.description is not None or notes.details is not None:
        return {"source": "wait", "description": notes.description, "details": notes.details}
    if notes.step is not None:
        return {"source": "step", "step": notes.step.name, "output": notes.step.output}
    return None


def fold_view(run_id: str, stored: Iterable[tuple[int, ev.RunEvent]]) -> RunView:
    view = RunView(run_id, keep_events=1_000_000)
    for seq, event in stored:
        view.apply(seq, event)
    return view
