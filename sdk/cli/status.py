"""``tether status``: which serve processes own which partitions, and how it stands.

Read from the leases bucket (``tether.engine.leases``): each live serve process, the
partitions it holds, each lease's age and the open waits its owner reported. Ages compare
the owner's clock with this machine's, so across machines they are as good as NTP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import orjson
from nats.js.errors import KeyNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from tether.cli.format import table
from tether.cli.runs import connection_args
from tether.engine.config import Settings
from tether.engine.connection import Connection
from tether.engine.leases import LEASE_PREFIX, LEASE_TTL_S, MEMBER_PREFIX


async def _entries(bucket: KeyValue) -> dict[str, dict[str, Any]]:
    try:
        keys = await bucket.keys()
    except NoKeysError:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        try:
            entry = await bucket.get(key)
        except KeyNotFoundError:
            continue  # removed meanwhile
        if entry.value:
            value = orjson.loads(entry.value)
            if isinstance(value, dict):
                out[key] = value
    return out


def summarize(entries: dict[str, dict[str, Any]], partitions: int, now: float) -> dict[str, Any]:
    """The status document (``--json`` prints it as is)."""
    owners: dict[str, list[int]] = {}
    members: dict[str, dict[str, Any]] = {}
    for key, member in entries.items():
        alive = now - float(member.get("renewed_at", 0)) < LEASE_TTL_S
        if key.startswith(MEMBER_PREFIX) and alive:
            owners.setdefault(str(member.get("name")), [])
            members[str(member.get("name"))] = {
                "commands_handled": int(member.get("commands_handled", 0))
            }
    leases: list[dict[str, Any]] = []
    for partition in range(partitions):
        value = entries.get(f"{LEASE_PREFIX}{partition}")
        if value is None:
            continue
        age = max(0.0, now - float(value.get("renewed_at", 0)))
        owner = str(value.get("owner"))
        live = age < LEASE_TTL_S
        if live:
            owners.setdefault(owner, []).append(partition)
        leases.append(
            {
                "partition": partition,
                "owner": owner,
                "age_s": round(age, 1),
                "lapsed": not live,
                "open_waits": int(value.get("open_waits", 0)),
            }
        )
    owned = {p for ps in owners.values() for p in ps}
    return {
        "partitions": partitions,
        "owners": {name: sorted(ps) for name, ps in sorted(owners.items())},
        "unowned": [p for p in range(partitions) if p not in owned],
        "leases": leases,
        "open_waits": sum(lease["open_waits"] for lease in leases if not lease["lapsed"]),
        "members": dict(sorted(members.items())),
    }


async def read_status(settings: Settings) -> dict[str, Any]:
    """The namespace's status document, as ``tether status --json`` prints it."""
    conn = await Connection.open(settings, name="tether-status")
    try:
        names = conn.settings.names
        try:
            bucket = await conn.js.key_value(names.leases_bucket)
        except NotFoundError:
            return summarize({}, names.partitions, time.time())
        return summarize(await _entries(bucket), names.partitions, time.time())
    finally:
        await conn.close()


def _print(status: dict[str, Any]) -> None:
    owners = status["owners"]
    print(
        f"{status['partitions']} partitions, {len(owners)} serve processes, "
        f"{len(status['unowned'])} partitions unowned, {status['open_waits']} open waits"
    )
    if owners:
        waits: dict[str, int] = {}
        for lease in status["leases"]:
            if not lease["lapsed"]:
                waits[lease["owner"]] = waits.get(lease["owner"], 0) + lease["open_waits"]
        rows = [
            [name, str(len(ps)), ",".join(map(str, ps)) or "-", str(waits.get(name, 0))]
            for name, ps in owners.items()
        ]
        print(table(["SERVE", "OWNS", "PARTITIONS", "OPEN WAITS"], rows))
    lapsed = [lease for lease in status["leases"] if lease["lapsed"]]
    for lease in lapsed:
        print(
            f"partition {lease['partition']}: lease of {lease['owner']} lapsed "
            f"{lease['age_s']:.0f}s ago; a live serve process takes it over"
        )
    if status["unowned"] and not owners:
        print("no serve process is running: start `tether serve`")


def cmd_status(args: argparse.Namespace) -> None:
    settings = Settings.from_env(args.nats_url, args.namespace)
    status = asyncio.run(read_status(settings))
    if args.json:
        print(json.dumps(status))
    else:
        _print(status)


def register(sub: Any) -> None:
    """Add ``status`` to the ``tether`` parser's subcommands."""
    p = sub.add_parser(
        "status", allow_abbrev=False, help="serve processes, their partitions and open waits"
    )
    connection_args(p)
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(fn=cmd_status)
