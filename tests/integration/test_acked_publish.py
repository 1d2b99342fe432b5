"""Tether's acknowledged publish answers as nats-py's JetStream publish does: the same
acknowledgement, the same errors, for the same publishes."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from tether.engine import wire
from tether.engine.acked_publish import AckedPublisher


async def outcome(publish: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """What a publish gives: its acknowledgement's fields, or its error's type and code."""
    try:
        ack = await publish(*args, **kwargs)
    except nats.js.errors.APIError as exc:
        return type(exc), exc.code, exc.err_code
    except Exception as exc:
        return type(exc)
    return ack.stream, ack.seq, ack.duplicate


async def test_acknowledgements_and_refusals_match_nats_py(plain_nc: NATS) -> None:
    js = plain_nc.jetstream(timeout=5)
    ours = AckedPublisher(plain_nc, timeout=5)
    seen: dict[str, list[Any]] = {}
    try:
        for who, publish in (("theirs", js.publish), ("ours", ours.publish)):
            stream = f"ACKED_{who.upper()}_{uuid.uuid4().hex[:8]}"
            subject = f"acked.{stream}"
            await js.add_stream(name=stream, subjects=[f"{subject}.>"])
            cases = [  # (subject, headers) of each publish
                (f"{subject}.a", {wire.MSG_ID: "first"}),
                (f"{subject}.a", {wire.MSG_ID: "first"}),  # a duplicate
                (f"{subject}.b", {wire.EXPECTED_LAST_SUBJECT_SEQ: "0"}),  # first of its subject
                (f"{subject}.b", {wire.EXPECTED_LAST_SUBJECT_SEQ: "0"}),  # refused: not first
                (f"nostream.{stream}", None),  # no stream takes it
            ]
            seen[who] = [
                await outcome(publish, case_subject, b"{}", headers=headers)
                for case_subject, headers in cases
            ]
            # the stream's name aside, the same answers
            seen[who] = [a[1:] if isinstance(a, tuple) and a[0] == stream else a for a in seen[who]]
    finally:
        await ours.close()
    assert seen["ours"] == seen["theirs"]
    assert seen["ours"][:3] == [(1, None), (1, True), (2, None)]
    refused = seen["ours"][3]
    assert refused[0] is nats.js.errors.BadRequestError and refused[2] in wire.OCC_CONFLICT_CODES
    assert seen["ours"][4] is nats.js.errors.NoStreamResponseError


async def test_an_unanswered_publish_times_out(plain_nc: NATS) -> None:
    ours = AckedPublisher(plain_nc, timeout=0.2)
    subject = f"unanswered.{uuid.uuid4().hex}"
    # A plain subscriber answers nothing: the request is delivered but never acknowledged.
    sub = await plain_nc.subscribe(subject)
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await ours.publish(subject, b"{}")
    finally:
        await sub.unsubscribe()
        await ours.close()
