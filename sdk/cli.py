"""The ``tether`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from tether.engine.config import Settings
from tether.engine.connection import NatsUnavailableError, redact
from tether.engine.nats_server import NatsServer, NatsServerError
from tether.logs import configure
from tether.server import TetherServer


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve(settings: Settings) -> None:
    server = TetherServer(settings)
    await server.start()
    print(f"tether serve: engine, matcher and timer running against {redact(settings.nats_url)} "
          f"(namespace {settings.namespace}); Ctrl-C or SIGTERM stops", flush=True)
    try:
        await _until_signalled()
    finally:
        await server.stop()


def cmd_serve(args: argparse.Namespace) -> None:
    asyncio.run(_serve(Settings.from_env(args.nats_url, args.namespace)))


def cmd_dev(args: argparse.Namespace) -> None:
    store = Path(args.store_dir).resolve()
    nats = NatsServer(store_dir=store, port=args.port, log_file=store / "nats-server.log")
    nats.start()
    print(f"tether dev: nats-server with JetStream at {nats.url} (store {store})", flush=True)
    print(f"  export TETHER_NATS_URL={nats.url}", flush=True)
    try:
        asyncio.run(_serve(Settings.from_env(nats.url, args.namespace)))
    finally:
        nats.stop()


def cmd_demo(args: argparse.Namespace) -> None:
    from tether.demo import run_demo

    asyncio.run(run_demo(args.nats_url, decision=args.decision))


def _run(fn: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    try:
        fn(args)
    except (NatsUnavailableError, NatsServerError, ValueError) as exc:
        print(f"tether: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("TETHER_LOG_LEVEL", "WARNING"))
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the engine service and projections")
    serve.add_argument("--nats-url", default=None, help="default: $TETHER_NATS_URL or local")
    serve.add_argument("--namespace", default=None, help="default: $TETHER_NAMESPACE or tether")
    serve.set_defaults(fn=cmd_serve)

    dev = sub.add_parser("dev", help="embedded nats-server plus serve, for local work")
    dev.add_argument("--store-dir", default=".tether/nats", help="persistent JetStream store")
    dev.add_argument("--port", type=int, default=4222)
    dev.add_argument("--namespace", default=None)
    dev.set_defaults(fn=cmd_dev)

    demo = sub.add_parser("demo", help="the approval walkthrough, end to end")
    demo.add_argument("--nats-url", default=None, help="default: an embedded nats-server")
    demo.add_argument("--decision", choices=["approve", "reject"], default="approve")
    demo.set_defaults(fn=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(args.log_level)
    return _run(args.fn, args)


if __name__ == "__main__":
    raise SystemExit(main())
