"""Poison events pushed by a plain nats-py client to ``<ns>.events.approval:decision``:
malformed JSON, a non-object, a payload and a ``Tether-Metadata`` header nested 300 levels
deep, an integer beyond 64 bits, and a 5,000-character key. Each is refused at the publish
or recorded in the rejected stream; none resolves the run it names. The valid approval
pushed after them resumes the run, and a restarted ``tether serve`` (which replays those
events) starts and resolves new work.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from tests.chaos.report import approved, emit, settle, tally
from tests.helpers import wait_until
from tests.integration.procs import APPROVAL_KEY, approve, define_tasks, trigger_approvals
from tests.integration.test_bad_input import rejections
from tests.integration.test_resilience import Children, all_in_status
from tether import Tether
from tether.engine.config import Settings

pytestmark = pytest.mark.chaos

DEPTH = 300
HUGE_KEY = "k" * 5000


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def poisons(run_id: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    """Each names the waiting run, so one that slipped through would resolve it with a
    decision other than ``approve``."""
    head = f'{{"runId": "{run_id}", "decision": "poison"'
    return {
        "invalid JSON": (f"{head}, ".encode(), {}),
        "not an object": (json.dumps([run_id, "approve"]).encode(), {}),
        f"{DEPTH}-deep payload": (f'{head}, "a": {nested(DEPTH)}}}'.encode(), {}),
        f"{DEPTH}-deep metadata": (f"{head}}}".encode(), {"Tether-Metadata": nested(DEPTH)}),
        "integer over 64 bits": (f'{head}, "amount": {2**70}}}'.encode(), {}),
    }


async def publish_huge_key(nats_url: str, settings: Settings) -> str:
    """A plain client publishing to a 5,000-character subject, on a connection of its own
    (the server may well close it); returns what happened."""
    nc = await nats.connect(nats_url, allow_reconnect=False)
    try:
        ack = await nc.jetstream().publish(settings.names.event_subject(HUGE_KEY), b"{}", timeout=5)
        return f"stored as {ack.seq}"
    except Exception as exc:
        return f"refused ({type(exc).__name__})"
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def sdk_push_huge_key(settings: Settings) -> tuple[str, bool]:
    """The SDK's own push of the huge key, on a Tether of its own so that a dropped
    connection shows here and spares the rest of the test; returns what happened and
    whether that connection stayed up."""
    sdk = Tether(settings=settings)
    try:
        conn = await sdk.connection()
        reconnects = conn.nc.stats["reconnects"]
        try:
            await sdk.events.push(HUGE_KEY, {"decision": "poison"})
            what = "accepted"
        except Exception as exc:
            what = f"refused ({type(exc).__name__})"
        try:
            await sdk.events.push("chaos:probe", {"after": "huge key"})
        except Exception:
            return what, False
        return what, conn.nc.stats["reconnects"] == reconnects
    finally:
        with contextlib.suppress(Exception):
            await sdk.close()


async def test_poison_events_are_refused_or_rejected(
    app: Tether,
    children: Children,
    settings: Settings,
    plain_nc: NATS,
    nats_url: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    tasks = define_tasks(app)
    serve = await children.serve("serve-1", nats_url, namespace)
    async with app.worker("w", tasks=[tasks["approval"]], slots=4):
        [healthy] = await trigger_approvals(tasks["approval"], 1, tmp_path)
        await all_in_status(children, app, [healthy.run_id], "waiting")

        outcome: dict[str, str] = {}
        stored: dict[str, int] = {}
        js = plain_nc.jetstream()
        for name, (data, headers) in poisons(healthy.run_id).items():
            try:
                ack = await js.publish(
                    settings.names.event_subject(APPROVAL_KEY), data, headers=headers
                )
                stored[name] = ack.seq
            except Exception as exc:
                outcome[name] = f"refused ({type(exc).__name__})"
        outcome["huge key (plain client)"] = await publish_huge_key(nats_url, settings)
        outcome["huge key (SDK)"], sdk_alive = await sdk_push_huge_key(settings)
        outcome["SDK connection after it"] = "up" if sdk_alive else "dropped"

        await app.events.push(APPROVAL_KEY, approve(healthy.run_id))
        await settle(app, [healthy.run_id], within=30)

        async def all_recorded() -> bool:
            recorded = {r["event_seq"] for r in await rejections(plain_nc, settings)}
            for name, seq in stored.items():
                outcome[name] = "rejected" if seq in recorded else "stored, not rejected"
            return all(seq in recorded for seq in stored.values())

        with contextlib.suppress(AssertionError):  # what is missing is asserted below
            await wait_until(all_recorded, timeout=15, message="rejections")

        # A new serve replays the poison events from the stream while it starts.
        await serve.kill()
        await children.serve("serve-2", nats_url, namespace)
        [fresh] = await trigger_approvals(tasks["approval"], 1, tmp_path)
        await all_in_status(children, app, [fresh.run_id], "waiting")
        await app.events.push(APPROVAL_KEY, approve(fresh.run_id))
        await settle(app, [fresh.run_id], within=30)

        row = await tally(
            app,
            "poison inputs",
            [healthy.run_id, fresh.run_id],
            approved,
            note="; ".join(f"{name}: {what}" for name, what in outcome.items()),
        )
    emit(row)
    assert row.clean, row.explain() + "\n" + children.report()
    not_recorded = [name for name, what in outcome.items() if what == "stored, not rejected"]
    assert not not_recorded, f"stored but never recorded as rejected: {not_recorded}; {outcome}"
    assert outcome["huge key (SDK)"] == "refused (ValueError)", outcome
    assert sdk_alive, "the SDK's connection was dropped by its push of the huge key"
