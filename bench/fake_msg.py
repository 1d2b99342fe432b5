"""A stand-in for a nats-py ``Msg`` with what the matcher reads, for in-process measurements."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Seq:
    stream: int


@dataclass(slots=True)
class _Meta:
    sequence: _Seq


@dataclass(slots=True)
class FakeMsg:
    """Subject, data, headers and the stream sequence: all the matcher uses of a message."""

    subject: str
    data: bytes
    headers: dict[str, str] | None
    metadata: _Meta


def fake_msg(subject: str, data: bytes, seq: int, headers: dict[str, str] | None = None) -> FakeMsg:
    return FakeMsg(subject, data, headers, _Meta(_Seq(seq)))
