"""The header parser installed into nats-py gives exactly what nats-py's own gives."""

from __future__ import annotations

import random

from nats.aio.client import Client

from tether.engine import nats_headers

STORED = (
    b"Nats-Stream: TETHER_RUNS\r\nNats-Subject: tether.runs.r1.wait_started.24\r\n"
    b"Nats-Sequence: 123456\r\nNats-Time-Stamp: 2026-11-28T19:18:22.616199477Z\r\n"
    b"Nats-Msg-Id: r1:12:wait_started:abcdef\r\nNats-Expected-Last-Subject-Sequence: 7\r\n"
    b"Nats-Expected-Last-Subject-Sequence-Subject: tether.runs.r1.>\r\n\r\n"
)


def test_the_parser_matches_nats_py_on_stored_and_fuzzed_headers() -> None:
    original = nats_headers.ORIGINAL
    assert original is not None
    parsed = nats_headers.parse_header_lines(STORED)
    assert parsed == original(STORED)
    assert parsed["Nats-Sequence"] == "123456"
    assert parsed["Nats-Expected-Last-Subject-Sequence-Subject"] == "tether.runs.r1.>"
    # names with whitespace or non-ASCII bytes, values with bad UTF-8 and non-ASCII spaces
    rng = random.Random(7)
    alphabet = b"ab:: \t\r\n\x1c\x85\xc2\xa0\xff\xe2\x80\xa8-Z"
    for _ in range(50_000):
        raw = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert nats_headers.parse_header_lines(raw) == original(raw), raw


def test_install_puts_the_parser_in_nats_py() -> None:
    nats_headers.install()
    assert Client._parse_header_lines(STORED) == nats_headers.parse_header_lines(STORED)
    assert Client._parse_header_lines is nats_headers.parse_header_lines
