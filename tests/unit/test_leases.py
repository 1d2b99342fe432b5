"""How partitions are shared out, and how `tether status` reads the leases bucket."""

from __future__ import annotations

import time

from tether.cli.status import summarize
from tether.engine.leases import (
    DEPARTED_AFTER_S,
    LEASE_TTL_S,
    PartitionLeases,
    Seen,
    fair_share,
    lease_key,
    member_key,
)


def test_fair_shares_add_up_and_differ_by_at_most_one() -> None:
    for members in (["a"], ["a", "b"], ["a", "b", "c"], [f"s{i}" for i in range(7)]):
        shares = [fair_share(members, me, 32) for me in members]
        assert sum(shares) == 32
        assert max(shares) - min(shares) <= 1


def test_a_process_counts_itself_before_its_own_member_key_is_seen() -> None:
    assert fair_share([], "a", 32) == 32
    assert fair_share(["a"], "b", 32) == 16


def test_member_keys_are_valid_kv_keys_for_any_name() -> None:
    key = member_key("host.example:4711")
    assert key.startswith("member.") and ":" not in key and key.count(".") == 1


def test_status_counts_live_leases_and_reports_lapsed_ones() -> None:
    now = 1_000.0
    entries = {
        member_key("a"): {"name": "a", "renewed_at": now - 1},
        member_key("dead"): {"name": "dead", "renewed_at": now - 60},
        lease_key(0): {"owner": "a", "renewed_at": now - 0.5, "open_waits": 3},
        lease_key(1): {"owner": "dead", "renewed_at": now - LEASE_TTL_S - 1, "open_waits": 2},
    }
    status = summarize(entries, 4, now)
    assert status["partitions"] == 4
    assert status["owners"] == {"a": [0]}
    assert status["unowned"] == [1, 2, 3]
    assert [lease["lapsed"] for lease in status["leases"]] == [False, True]
    assert status["open_waits"] == 3


async def test_member_keys_of_departed_processes_are_deleted() -> None:
    deleted: list[tuple[str, int | None]] = []

    class Bucket:
        async def delete(self, key: str, last: int | None = None) -> bool:
            deleted.append((key, last))
            return True

    async def nothing(_: int) -> None:
        return None

    leases = PartitionLeases(
        Bucket(),  # type: ignore[arg-type]
        "me",
        4,
        on_acquire=nothing,
        on_release=nothing,
    )
    now = time.monotonic()
    leases.seen[member_key("gone")] = Seen(7, {"name": "gone"}, now - DEPARTED_AFTER_S - 1)
    leases.seen[member_key("here")] = Seen(9, {"name": "here"}, now)
    await leases._forget_departed()
    assert deleted == [(member_key("gone"), 7)]
    assert leases.live_members() == ["here"]
