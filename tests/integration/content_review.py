"""The content-review workflow as the surfaces' tests run it: draft, a human review gate
decided on ``key``, then publish (approved) or notify the author (anything else)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from tether import ParentCondition, TaskContext, Tether, UserEventCondition, Workflow

# the tasks in the workflow's order, with their parents
PARENTS: dict[str, list[str]] = {
    "draft": [],
    "human_review": ["draft"],
    "publish": ["human_review"],
    "notify_author": ["human_review"],
}


class Post(BaseModel):
    text: str


def content_review(app: Tether, key: str) -> Workflow:
    review = app.workflow(name="content-review", execution_timeout=timedelta(hours=24))

    @review.task()
    async def draft(input: Post, ctx: TaskContext) -> dict[str, Any]:
        return {"text": input.text.upper(), "risk": 0.7}

    @review.task(parents=[draft], wait_for=[UserEventCondition(key, "input.runId == run.id")])
    async def human_review(input: Post, ctx: TaskContext) -> dict[str, Any]:
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
