"""The slot-bounded pull consumer against a real JetStream consumer: it never runs more
messages than its slots, handles every message, and a busy puller asks for messages in
batches rather than once per handled message."""

from __future__ import annotations

import asyncio
import uuid

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from tests.helpers import wait_until
from tether.engine import wire
from tether.engine.pull import SlotBudget, SlotPuller

SLOTS = 16
MESSAGES = 400


async def work_queue(nc: NATS) -> tuple[str, str, str]:
    """A fresh stream with a durable pull consumer: (stream, consumer, subject)."""
    stream, consumer = f"PULL_{uuid.uuid4().hex[:8]}", "work"
    subject = f"pull.{stream}"
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[subject])
    await js.add_consumer(
        stream, ConsumerConfig(durable_name=consumer, ack_policy=AckPolicy.EXPLICIT)
    )
    return stream, consumer, subject


async def test_a_busy_puller_stays_within_its_slots_and_asks_in_batches(plain_nc: NATS) -> None:
    stream, consumer, subject = await work_queue(plain_nc)
    js = plain_nc.jetstream()
    requests: list[bytes] = []

    async def on_request(msg: Msg) -> None:  # every pull request the puller sends
        requests.append(msg.data)

    watch = await plain_nc.subscribe(wire.consumer_next(stream, consumer), cb=on_request)
    running, most_running = 0, 0
    handled: set[bytes] = set()

    async def handle(msg: Msg) -> None:
        nonlocal running, most_running
        running += 1
        most_running = max(most_running, running)
        await asyncio.sleep(0.001)  # some work, so that handlers overlap
        handled.add(msg.data)
        running -= 1
        await msg.ack()

    puller = SlotPuller(plain_nc, stream, consumer, handle, budget=SlotBudget(SLOTS))
    await puller.start()
    try:
        for i in range(MESSAGES):
            await js.publish(subject, str(i).encode())

        async def all_handled() -> bool:
            return len(handled) == MESSAGES

        await wait_until(all_handled, message=f"all {MESSAGES} messages handled")
    finally:
        await puller.stop()
        await watch.unsubscribe()
    assert most_running <= SLOTS
    # Asking again once half the slots' share is used up: about one request per eight
    # messages here, where asking per handled message made one request per message.
    assert len(requests) <= MESSAGES // (SLOTS // 2) + 10, f"{len(requests)} pull requests"


async def test_deliveries_that_settle_without_a_slot_are_not_handed_back(plain_nc: NATS) -> None:
    """Every slot is held by work from outside the puller when its open request brings two
    messages. Both wait without a slot: one is settled by that work, the other needs the
    handler after all and runs once a slot is free. Neither is delivered twice."""
    stream, consumer, subject = await work_queue(plain_nc)
    js = plain_nc.jetstream()
    outside_done = asyncio.Event()
    waiting: list[bytes] = []
    handled: list[bytes] = []

    async def settle(msg: Msg) -> bool:
        waiting.append(msg.data)
        await outside_done.wait()
        if msg.data == b"settled":
            await msg.ack()
            return True
        return False

    async def handle(msg: Msg) -> None:
        handled.append(msg.data)
        await msg.ack()

    budget = SlotBudget(2)
    puller = SlotPuller(plain_nc, stream, consumer, handle, budget=budget, settles=settle)
    await puller.start()
    try:

        async def asked_for_both() -> bool:
            return puller.outstanding == 2

        await wait_until(asked_for_both, message="a request for two messages")
        assert budget.take() and budget.take()  # the outside work holds every slot
        await js.publish(subject, b"settled")
        await js.publish(subject, b"unsettled")

        async def both_waiting() -> bool:
            return len(waiting) == 2

        await wait_until(both_waiting, message="both deliveries waiting without a slot")
        assert handled == [] and budget.active == 2
        budget.give_back()
        budget.give_back()
        outside_done.set()

        async def all_acknowledged() -> bool:
            info = await js.consumer_info(stream, consumer)
            return info.num_ack_pending == 0 and info.num_pending == 0

        await wait_until(all_acknowledged, message="both messages acknowledged")
        info = await js.consumer_info(stream, consumer)
    finally:
        await puller.stop()
    assert handled == [b"unsettled"]
    assert info.delivered.consumer_seq == 2  # each delivered once


async def test_a_message_handed_back_unrun_still_counts_as_never_run(plain_nc: NATS) -> None:
    """A delivery that finds every slot taken is handed back without running; when it comes
    back it is still one no attempt ran (``first_run``), unlike one handed back after its
    handler ran it."""
    stream, consumer, subject = await work_queue(plain_nc)
    js = plain_nc.jetstream()
    runs: list[tuple[int, bool]] = []  # (delivery, never run before) per handler call
    budget = SlotBudget(1)

    async def handle(msg: Msg) -> None:
        runs.append((msg.metadata.num_delivered, puller.first_run(msg)))
        if len(runs) == 1:
            await msg.nak()  # ran, then handed back: its next delivery was run before
        else:
            await msg.ack()

    puller = SlotPuller(plain_nc, stream, consumer, handle, budget=budget)
    await puller.start()
    try:

        async def asked() -> bool:
            return puller.outstanding == 1

        await wait_until(asked, message="a request for one message")
        assert budget.take()  # the only slot is busy when the message arrives
        await js.publish(subject, b"work")

        async def handed_back() -> bool:  # delivered on the request, which is used up
            info = await js.consumer_info(stream, consumer)
            return info.delivered.consumer_seq == 1 and puller.outstanding == 0

        await wait_until(handed_back, message="the delivery handed back unrun")
        assert runs == []
        budget.give_back()

        async def acknowledged() -> bool:
            return len(runs) == 2

        await wait_until(acknowledged, message="the message run twice")
    finally:
        await puller.stop()
    assert runs == [(2, True), (3, False)]
