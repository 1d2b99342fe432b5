"""The content-review workflow as the surfaces' tests run it: draft, a human review gate
decided on ``key``, then publish (approved) or notify the author (anything else)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from tether import (
    ParentCondition,
    SleepCondition,
    TaskContext,
    Tether,
    UserEventCondition,
    Workflow,
    or_,
)

# the tasks in the workflow's order, with their parents
PARENTS: dict[str, list[str]] = {
    "draft": [],
    "human_review": ["draft"],
    "publish": ["human_review"],
    "notify_author": ["human_review"],
}


KEY = "review:decision"


class Post(BaseModel):
    text: str
    risk: float = 0.7


def content_review(
    app: Tether,
    key: str = KEY,
    *,
    expire_after: timedelta = timedelta(hours=4),
    name: str = "content-review",
) -> Workflow:
    """The contract's workflow: the gate also expires after ``expire_after`` without an
    answer, and is skipped (with both branches) for a draft of low risk."""
    review = app.workflow(name=name, execution_timeout=timedelta(hours=24))

    @review.task()
    async def draft(input: Post, ctx: TaskContext) -> dict[str, Any]:
        return {"text": input.text.upper(), "risk": input.risk}

    @review.task(
        parents=[draft],
        wait_for=[
            or_(
                UserEventCondition(key, "input.runId == run.id"),
                SleepCondition(expire_after, key="expired"),
            )
        ],
        skip_if=[ParentCondition(draft, "output.risk < 0.5")],
    )
    async def human_review(input: Post, ctx: TaskContext) -> dict[str, Any]:
        if ctx.wait_result.fired == ["expired"]:
            return {"decision": "expired"}
        payload: dict[str, Any] = ctx.wait_result.payloads[key]
        return payload

    @review.task(
        parents=[human_review],
        skip_if=[ParentCondition(human_review, "output.decision != 'approve'")],
    )
    async def publish(input: Post, ctx: TaskContext) -> dict[str, Any]:
        return {"published": ctx.task_output(draft)["text"]}

    @review.task(
        parents=[human_review],
        skip_if=[ParentCondition(human_review, "output.decision == 'approve'")],
    )
    async def notify_author(input: Post, ctx: TaskContext) -> dict[str, Any]:
        return {"notified": ctx.task_output(human_review)["decision"]}

    return review
