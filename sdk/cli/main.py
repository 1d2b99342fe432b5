"""The ``tether`` command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

from tether.cli import runs as cli_runs
from tether.cli import status as cli_status
from tether.engine.config import Settings
from tether.engine.connection import NatsUnavailableError, redact
from tether.engine.nats_server import NatsServer, NatsServerError
from tether.engine.permissions import NatsPermissionError
from tether.engine.provision import ProvisionError
from tether.engine.tracing import configure_from_env
from tether.errors import TetherError
from tether.http.server import DEFAULT_HTTP, ApiServer, HttpAddressError, check_address_free
from tether.logs import configure
from tether.operator.auth import TokenAuth, dev_token, load_token_auth
from tether.runtime.signals import until_signalled
from tether.serve import TetherServer
from tether.version import __version__


def _dashboard_line(url: str, token: str | None) -> str:
    link = f"{url}/#token={token}" if token else f"{url}/"
    return f"  dashboard: {link}  (API: {url}/api, OpenAPI: {url}/openapi.json)"


async def _serve(
    settings: Settings,
    *,
    http: str | None = None,
    auth: TokenAuth | None = None,
    show_token: str | None = None,
    name: str | None = None,
) -> None:
    server = TetherServer(settings, http=http, auth=auth, name=name)
    await server.start()
    owned = server.owner.partitions if server.owner else []
    print(
        f"tether serve: engine, matcher and timer running against {redact(settings.nats_url)} "
        f"(namespace {settings.namespace}) as {server.name}, owning {len(owned)} partitions "
        "for now; Ctrl-C or SIGTERM stops",
        flush=True,
    )
    if server.api is not None:
        print(_dashboard_line(server.api.url, show_token), flush=True)
    try:
        await until_signalled()
    finally:
        await server.stop()


def cmd_serve(args: argparse.Namespace) -> None:
    auth = load_token_auth(args.tokens) if args.http else None
    settings = Settings.from_env(args.nats_url, args.namespace)
    if args.partitions is not None:
        settings = settings.with_partitions(args.partitions)
    asyncio.run(_serve(settings, http=args.http, auth=auth, name=args.name))


async def _api(settings: Settings, http: str, auth: TokenAuth) -> None:
    api = ApiServer(settings, auth, address=http)
    await api.start()
    print(
        f"tether api: HTTP API and dashboard for {redact(settings.nats_url)} "
        f"(namespace {settings.namespace}); Ctrl-C or SIGTERM stops",
        flush=True,
    )
    print(_dashboard_line(api.url, None), flush=True)
    try:
        await until_signalled()
    finally:
        await api.stop()


def cmd_api(args: argparse.Namespace) -> None:
    settings = Settings.from_env(args.nats_url, args.namespace)
    asyncio.run(_api(settings, args.http, load_token_auth(args.tokens)))


def cmd_dev(args: argparse.Namespace) -> None:
    store = Path(args.store_dir).resolve()
    if args.http:  # refuse a busy dashboard port before starting anything
        check_address_free(args.http)
    nats = NatsServer(store_dir=store, port=args.port, log_file=store / "nats-server.log")
    nats.start()
    print(f"tether dev: nats-server with JetStream at {nats.url} (store {store})", flush=True)
    print(f"  export TETHER_NATS_URL={nats.url}", flush=True)
    http = args.http or None
    auth, token = load_token_auth(args.tokens), None
    if http and not len(auth):  # no tokens configured: one for this session, in the link
        token, auth = dev_token()
    try:
        asyncio.run(
            _serve(
                Settings.from_env(nats.url, args.namespace), http=http, auth=auth, show_token=token
            )
        )
    finally:
        nats.stop()


def cmd_demo(args: argparse.Namespace) -> None:
    from tether.cli.demo import run_demo

    if args.interactive:
        from tether.cli.demo import run_interactive_demo

        asyncio.run(run_interactive_demo(args.nats_url, http=args.http))
        return
    asyncio.run(run_demo(args.nats_url, decision=args.decision))


def _run(fn: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    try:
        fn(args)
    except (
        NatsUnavailableError,
        NatsServerError,
        NatsPermissionError,
        HttpAddressError,
        ProvisionError,
    ) as exc:
        print(f"tether: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a malformed argument
        print(f"tether: {exc}", file=sys.stderr)
        return 2
    except TetherError as exc:  # refused: unknown run, nothing to decide, not allowed, ...
        print(f"tether: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tether",
        description="Tether: durable human-in-the-loop tasks on NATS JetStream.",
        epilog="Every command that talks to NATS takes --nats-url (or $TETHER_NATS_URL).",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("TETHER_LOG_LEVEL", "WARNING"),
        help="DEBUG, INFO, WARNING (default, or $TETHER_LOG_LEVEL) or ERROR",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve", allow_abbrev=False, help="run the engine service and projections"
    )
    cli_runs.connection_args(serve)
    serve.add_argument(
        "--http",
        default=None,
        metavar="HOST:PORT",
        help="also serve the HTTP API and dashboard there",
    )
    serve.add_argument(
        "--tokens",
        default=None,
        metavar="FILE",
        help="API tokens (JSON); default: $TETHER_API_TOKENS(_FILE)",
    )
    serve.add_argument(
        "--name",
        default=None,
        help="this process among the serve processes (default: host:pid); unique per process",
    )
    serve.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="partition count of a new namespace (default: $TETHER_PARTITIONS or 32); an "
        "existing namespace keeps its own, and another count is refused",
    )
    serve.set_defaults(fn=cmd_serve)
    cli_status.register(sub)

    api = sub.add_parser("api", allow_abbrev=False, help="only the HTTP API and dashboard")
    cli_runs.connection_args(api)
    api.add_argument("--http", default=DEFAULT_HTTP, metavar="HOST:PORT", help="where to listen")
    api.add_argument(
        "--tokens",
        default=None,
        metavar="FILE",
        help="API tokens (JSON); default: $TETHER_API_TOKENS(_FILE)",
    )
    api.set_defaults(fn=cmd_api)

    dev = sub.add_parser(
        "dev", allow_abbrev=False, help="embedded nats-server plus serve, for local work"
    )
    dev.add_argument("--store-dir", default=".tether/nats", help="persistent JetStream store")
    dev.add_argument(
        "--port", type=int, default=4222, help="nats-server port (default 4222; 0: a free one)"
    )
    dev.add_argument(
        "--namespace", default=None, help="prefix of subjects and streams (default: tether)"
    )
    dev.add_argument(
        "--http",
        default=DEFAULT_HTTP,
        metavar="HOST:PORT",
        help="dashboard and API address ('' for none)",
    )
    dev.add_argument(
        "--tokens",
        default=None,
        metavar="FILE",
        help="API tokens (JSON); default: a fresh token printed in the link",
    )
    dev.set_defaults(fn=cmd_dev)

    demo = sub.add_parser("demo", allow_abbrev=False, help="the approval walkthrough, end to end")
    demo.add_argument("--nats-url", default=None, help="default: an embedded nats-server")
    demo.add_argument(
        "--decision",
        choices=["approve", "reject"],
        default="approve",
        help="what the demo's reviewer decides (default: approve)",
    )
    demo.add_argument(
        "--interactive",
        action="store_true",
        help="leave the run waiting and decide it in the dashboard",
    )
    demo.add_argument(
        "--http",
        default=DEFAULT_HTTP,
        metavar="HOST:PORT",
        help="dashboard address for --interactive",
    )
    demo.set_defaults(fn=cmd_demo)
    cli_runs.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(args.log_level)
    try:
        provider = configure_from_env()  # the standard OTEL_* variables; off when unset
    except RuntimeError as exc:
        print(f"tether: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(args.fn, args)
    finally:
        if provider is not None:
            provider.shutdown()  # flush spans still in the batch processor


if __name__ == "__main__":
    raise SystemExit(main())
