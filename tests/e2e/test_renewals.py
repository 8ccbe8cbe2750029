"""Renewals over the real wire: Celery workers and beat, localstripe over HTTP, the API and the
command line. Every "one charge" is counted in the stand-in's PaymentIntents."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.bootstrap import Runtime
from shared.domain.periods import next_renewal, today_in
from shared.store.models import Renewal, Subscription
from tests.conftest import ROOT, Server, Tenant, Worker, seats_json
from tests.e2e.stripe_helpers import DECLINED, THREE_D_SECURE, authenticate, new_card, stripe_client

pytestmark = pytest.mark.e2e

TZ = "America/Toronto"


def due_today(runtime: Runtime, web: Server, seats: int = 3, unit: int = 10000) -> Tenant:
    """A yearly plan whose renewal day is today in its billing time zone."""
    today = today_in(TZ)
    return Tenant(
        runtime,
        web.url,
        seats=seats,
        unit_amount=unit,
        period_start=today - timedelta(days=365),
        renews_at=today,
    )


def save_card(shop: Tenant, card: str, role: str = "buyer") -> Any:
    return shop.clients[role].put("/api/payment-method", json={"payment_method": card})


def renewal_intents(stripe_base: str, subscription_id: int) -> list[dict[str, Any]]:
    """Every PaymentIntent at the stand-in made for this plan's renewals (its list cannot
    filter, so all are read and sorted out here)."""
    client = stripe_client(stripe_base)
    found, params = [], {"limit": 100}
    while True:
        page = client.v1.payment_intents.list(params=params)  # type: ignore[arg-type]
        found += [i.to_dict() for i in page.data]
        if not page.has_more or not page.data:
            break
        params["starting_after"] = page.data[-1].id  # type: ignore[assignment]
    return [
        i for i in found if (i.get("metadata") or {}).get("subscription_id") == str(subscription_id)
    ]


def plan_of(shop: Tenant, role: str = "owner") -> dict[str, Any]:
    body: dict[str, Any] = shop.clients[role].get(f"/api/subscriptions/{shop.sub}").json()
    return body


def wait_status(shop: Tenant, status: str, timeout: float = 45) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = plan_of(shop)
        if body["status"] == status and (
            status != "active" or body["renews_at"] != str(today_in(TZ))
        ):
            return body
        assert time.monotonic() < deadline, f"plan still {body}"
        time.sleep(0.2)


def test_a_plan_due_today_renews_once_for_its_active_seats(
    stack_runtime: Runtime,
    stack_web: Server,
    worker: Worker,
    worker_env: dict[str, str],
    stripe_base: str,
) -> None:
    shop = due_today(stack_runtime, stack_web)
    assert save_card(shop, new_card(stripe_base)).status_code == 200
    assert shop.buyer.put(f"/api/subscriptions/{shop.sub}/seats", json={"active_seats": 2}).ok
    ran = seats_json(worker_env, "renewals", "run")
    assert ran["due"] >= 1
    body = wait_status(shop, "active")
    today = today_in(TZ)
    assert (body["current_period_start"], body["renews_at"]) == (
        str(today),
        str(next_renewal(today, "year", today.day)),
    )
    assert (body["paid_seats"], body["active_seats"]) == (2, 2)
    [intent] = renewal_intents(stripe_base, shop.sub)
    assert (intent["status"], intent["amount"]) == ("succeeded", 2 * 10000)
    seats_json(worker_env, "renewals", "run")  # again: nothing more for this period
    assert len(renewal_intents(stripe_base, shop.sub)) == 1


def test_declined_then_a_new_card_renews_once_from_the_old_renewal_date(
    stack_runtime: Runtime,
    stack_web: Server,
    worker: Worker,
    worker_env: dict[str, str],
    stripe_base: str,
) -> None:
    shop = due_today(stack_runtime, stack_web)
    assert save_card(shop, new_card(stripe_base, DECLINED)).status_code == 200
    seats_json(worker_env, "renewals", "run")
    body = wait_status(shop, "past_due")
    assert body["renewal"]["failure_code"] == "card_declined"
    assert body["renewal"]["attempts"] == 1 and body["renewal"]["next_attempt_at"]
    assert body["paid_seats"] == 3
    refused = shop.buyer.post(
        "/api/cart/items", json={"subscription_id": shop.sub, "active_seats": 5, "confirm": True}
    )
    assert refused.status_code == 409 and refused.json()["error"] == "past_due"
    assert save_card(shop, new_card(stripe_base), role="member").status_code == 403

    saved = save_card(shop, new_card(stripe_base))
    assert saved.status_code == 200 and saved.json()["renewals_retried"] == 1
    body = wait_status(shop, "active")
    assert body["current_period_start"] == str(today_in(TZ))
    intents = renewal_intents(stripe_base, shop.sub)
    assert [i["status"] for i in intents] == ["succeeded"], intents


def test_authentication_required_is_shown_to_buyers_and_completed_by_the_bank(
    stack_runtime: Runtime,
    stack_web: Server,
    worker: Worker,
    worker_env: dict[str, str],
    stripe_base: str,
) -> None:
    shop = due_today(stack_runtime, stack_web)
    save_card(shop, new_card(stripe_base, THREE_D_SECURE))
    seats_json(worker_env, "renewals", "run")
    body = wait_status(shop, "past_due")
    secret = body["renewal"]["client_secret"]
    assert body["renewal"]["failure_code"] == "authentication_required" and secret
    assert "client_secret" not in plan_of(shop, "member")["renewal"]
    authenticate(stripe_base, secret.split("_secret_")[0], secret)
    wait_status(shop, "active")  # settled by the stand-in's signed webhook (or the poll)
    assert [i["status"] for i in renewal_intents(stripe_base, shop.sub)] == ["succeeded"]


def run_seats(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "shared.cli", *args, "--json"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_scans_beside_beat_renew_each_plan_once(
    stack_runtime: Runtime,
    stack_web: Server,
    worker_env: dict[str, str],
    tmp_path: Path,
    stripe_base: str,
) -> None:
    shops = [due_today(stack_runtime, stack_web) for _ in range(4)]
    for shop in shops:
        save_card(shop, new_card(stripe_base))
    beat = Worker(worker_env, tmp_path / "beat.log")
    beat.start(SEATS_RENEWAL_SCAN_INTERVAL="1")
    try:
        runs = [run_seats(worker_env, "renewals", "run") for _ in range(2)]
        for run in runs:
            out, err = run.communicate(timeout=120)
            assert run.returncode == 0, out + err
        for shop in shops:
            wait_status(shop, "active")
    finally:
        beat.stop()
    for shop in shops:
        intents = renewal_intents(stripe_base, shop.sub)
        assert [i["status"] for i in intents] == ["succeeded"], intents


@pytest.mark.parametrize("step", ["renewal_created", "renewal_confirmed"])
def test_a_worker_killed_mid_renewal_charges_once(
    step: str,
    stack_runtime: Runtime,
    stack_web: Server,
    worker_env: dict[str, str],
    tmp_path: Path,
    stripe_base: str,
    worker: Worker,
) -> None:
    worker.stop()  # the module's worker would take the renewal; this test's own must
    try:
        killed_mid_renewal(step, stack_runtime, stack_web, worker_env, tmp_path, stripe_base)
    finally:
        worker.start()


def killed_mid_renewal(
    step: str,
    stack_runtime: Runtime,
    stack_web: Server,
    worker_env: dict[str, str],
    tmp_path: Path,
    stripe_base: str,
) -> None:
    shop = due_today(stack_runtime, stack_web)
    save_card(shop, new_card(stripe_base))
    marker = tmp_path / "reached"
    doomed = Worker(worker_env, tmp_path / "doomed.log")
    doomed.start(
        SEATS_FAILPOINT=step,
        SEATS_FAILPOINT_FILE=str(marker),
        SEATS_RENEWAL_SCAN_INTERVAL="1",
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert time.monotonic() < deadline, "the worker never reached " + step
            time.sleep(0.1)
    finally:
        doomed.kill()
    with stack_runtime.uow() as uow:
        renewal = uow.session.query(Renewal).filter_by(subscription_id=shop.sub).one()
        assert renewal.status == "processing" and renewal.stripe_payment_intent_id
    survivor = Worker(worker_env, tmp_path / "survivor.log")
    survivor.start(SEATS_RENEWAL_SCAN_INTERVAL="1")
    try:
        wait_status(shop, "active", timeout=90)
    finally:
        survivor.stop()
    intents = renewal_intents(stripe_base, shop.sub)
    assert [i["status"] for i in intents] == ["succeeded"], intents
    with stack_runtime.uow() as uow:
        plan = uow.session.get_one(Subscription, shop.sub)
        assert plan.paid_seats == 3 and plan.status == "active"


def test_a_plan_of_another_day_is_left_alone(
    stack_runtime: Runtime, stack_web: Server, worker_env: dict[str, str], stripe_base: str
) -> None:
    today = today_in(TZ)
    shop = Tenant(
        stack_runtime,
        stack_web.url,
        period_start=today - timedelta(days=364),
        renews_at=today + timedelta(days=1),
    )
    save_card(shop, new_card(stripe_base))
    seats_json(worker_env, "renewals", "run")
    assert plan_of(shop)["renews_at"] == str(today + timedelta(days=1))
    assert renewal_intents(stripe_base, shop.sub) == []
