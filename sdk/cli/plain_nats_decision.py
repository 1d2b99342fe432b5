"""Push an approval decision with plain nats-py: no Tether import, as any service would.

Usage: python plain_nats_decision.py NATS_URL RUN_ID approve|reject [REASON] [APPROVER]

The decision goes to the approver's own subject space, ``tether.from.<approver>.<key>``, so
the run records who decided (NATS permissions decide who may publish there).
"""

import asyncio
import json
import sys
import uuid

import nats


async def main(
    url: str, run_id: str, decision: str, reason: str | None, approver: str = "reviewer"
) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    payload = {"runId": run_id, "decision": decision}
    if reason:
        payload["reason"] = reason
    # A JetStream publish gets an ack; Nats-Msg-Id makes a retry harmless.
    ack = await js.publish(
        f"tether.from.{approver}.approval:decision",
        json.dumps(payload).encode(),
        headers={"Nats-Msg-Id": f"decision-{run_id}-{uuid.uuid4().hex[:8]}"},
    )
    print(f"{approver} pushed {decision} for run {run_id}: {json.dumps(payload)} (seq {ack.seq})")
    await nc.close()


if __name__ == "__main__":
    url, run_id, decision, *rest = sys.argv[1:]
    asyncio.run(main(url, run_id, decision, rest[0] if rest else None, *rest[1:2]))
