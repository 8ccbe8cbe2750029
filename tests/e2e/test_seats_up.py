"""The README run command with nothing configured: it all works, and Ctrl-C ends it all."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import psutil
import pytest
import requests

from shared.cli.embedded import free_port
from tests.conftest import ROOT, Client, seats_json
from tests.e2e.stripe_helpers import new_card, wait_for

pytestmark = pytest.mark.e2e


def readme_example() -> str:
    """The README's provisioning and API example, its code lines exactly as written."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- the example:")
    end = readme.index("<!-- end of the API example -->")
    lines = [line[4:] for line in readme[start:end].splitlines() if line.startswith("    ")]
    return "\n".join(lines) + "\n"


def run_readme_example(env: dict[str, str], web: str, stripe_base: str, where: Path) -> None:
    """A fresh shell runs it; only the two addresses `seats up` printed are put in."""
    script = readme_example()
    assert "W=http://127.0.0.1:8000\n" in script and "S=http://127.0.0.1:8420\n" in script
    script = script.replace("W=http://127.0.0.1:8000\n", f"W={web}\n")
    script = script.replace("S=http://127.0.0.1:8420\n", f"S={stripe_base}\n")
    script += 'sleep 5; curl -s -H "Authorization: Bearer $T" $W/api/subscriptions/$SUB\n'
    shell_env = {**env, "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env=shell_env,
        cwd=where,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert answers[2]["active_seats"] == 3 and answers[3]["error"] == "purchase_required"
    assert answers[-1]["paid_seats"] == 5 and answers[-1]["active_seats"] == 5, done.stdout
    assert answers[-1]["payment_method"]["last4"] == "4242"


def test_seats_up_with_embedded_defaults(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "DATABASE_URL",
            "REDIS_URL",
            "STRIPE_API_KEY",
            "STRIPE_API_BASE",
            "STRIPE_WEBHOOK_SECRET",
            "SECRET_KEY",
        )
        and not k.startswith("SEATS_")
    }
    port = free_port()
    env.update(
        SEATS_HOME=str(tmp_path / "home"),
        PYTHONPATH=str(ROOT),
        SEATS_SWEEP_INTERVAL="2",
        SEATS_STUCK_AFTER="5",
    )
    log = tmp_path / "up.log"
    up = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "up", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    family: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while "press Ctrl-C" not in log.read_text(errors="replace"):
            assert up.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        assert "TEST MODE, localstripe stand-in" in text
        assert "embedded PostgreSQL" in text and "embedded Redis" in text
        assert f"http://127.0.0.1:{port}/" in text
        stripe_base = re.search(r"stand-in at (http://\S+)", text).group(1)  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        health = requests.get(f"{base}/healthz", timeout=10)
        assert health.status_code == 200, health.text

        org = seats_json(env, "org", "create", "--name", "Newcomer")["id"]
        token = seats_json(
            env, "user", "create", "--org", str(org), "--email", "n@example.com", "--role", "owner"
        )["token"]
        sub = seats_json(
            env,
            "subscription",
            "create",
            "--org",
            str(org),
            "--product",
            "XLGL",
            "--unit-amount",
            "50000",
            "--interval",
            "year",
            "--seats",
            "3",
            "--period-start",
            date.today().isoformat(),
        )["id"]
        owner = Client(base, str(token))
        owner.post(
            "/api/cart/items", json={"subscription_id": sub, "active_seats": 4, "confirm": True}
        )
        # the pages: the printed sign-in hint works, and they load the stand-in's Stripe.js
        hint = re.search(r"sign in with a one-time link: (.+)", text).group(1)  # type: ignore[union-attr]
        assert hint == f"SEATS_BASE_URL={base} seats user login-link --email EMAIL"
        link = seats_json(
            {**env, "SEATS_BASE_URL": base}, "user", "login-link", "--email", "n@example.com"
        )["url"]
        person = requests.Session()
        assert person.get(link, timeout=10).url == f"{base}/profile"
        ops_hint = re.search(r"operator pages \(/ops\).*sign in with: (.+)", text).group(1)  # type: ignore[union-attr]
        assert ops_hint == f"SEATS_BASE_URL={base} seats operator login-link --email EMAIL"
        seats_json(env, "operator", "create", "--email", "ops@example.com")
        ops_link = seats_json(
            {**env, "SEATS_BASE_URL": base}, "operator", "login-link", "--email", "ops@example.com"
        )["url"]
        operator = requests.Session()
        assert operator.get(ops_link, timeout=10).url == f"{base}/ops/"
        cart_page = person.get(f"{base}/cart", timeout=10).text
        assert f'<script src="{stripe_base}/js.stripe.com/v3/"' in cart_page
        assert 'data-stripe-key="pk_test_' in cart_page
        answer = owner.post(
            "/api/checkout",
            json={"payment_method": new_card(stripe_base)},
            headers={"Idempotency-Key": "newcomer"},
        )
        assert answer.status_code == 202, answer.text
        assert wait_for(owner, answer.json()["purchase_id"])["status"] == "succeeded"
        plan = owner.get(f"/api/subscriptions/{sub}").json()
        assert (plan["paid_seats"], plan["active_seats"]) == (4, 4)

        run_readme_example(env, base, stripe_base, tmp_path)

        # a second terminal with nothing set reaches the same stack through its stack file
        stack_file = tmp_path / "home" / "run" / "stack.json"
        assert stack_file.stat().st_mode & 0o777 == 0o600
        status = seats_json(env, "ops", "status")
        assert status["broker"] == "ok" and status["workers"], status  # the embedded Redis
        events = seats_json(env, "webhooks", "list", "--type", "payment_intent.succeeded")
        assert events["events"], "the stand-in's signed webhooks reached the web"
        replayed = seats_json(env, "webhooks", "replay", events["events"][0]["id"])
        assert set(replayed["events"].values()) == {"processed"}  # it asked the stand-in
        again = subprocess.run(
            [sys.executable, "-m", "shared.cli", "up", "--port", str(free_port())],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert again.returncode == 1 and "already running" in again.stderr, again.stderr
        assert base in again.stderr

        family = {p.pid for p in psutil.Process(up.pid).children(recursive=True)}
        family |= {
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if str(tmp_path / "home") in " ".join(p.info["cmdline"] or [])
        }
        assert len(family) >= 5
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0, log.read_text()
    finally:
        if up.poll() is None:
            up.kill()
    time.sleep(1)
    alive = [
        pid
        for pid in family
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert alive == [], [psutil.Process(p).cmdline() for p in alive]
    assert "seats: stopped" in log.read_text()
    assert not (tmp_path / "home" / "run" / "stack.json").exists()
