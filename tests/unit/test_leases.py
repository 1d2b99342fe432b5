"""How partitions are shared out, and how `tether status` reads the leases bucket."""

from __future__ import annotations

from tether.cli.status import summarize
from tether.engine.leases import LEASE_TTL_S, fair_share, lease_key, member_key


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
