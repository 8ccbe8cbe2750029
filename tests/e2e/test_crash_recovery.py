"""A killed worker, a flushed broker, a charge run twice at once: one purchase, one charge."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from shared.bootstrap import Runtime
from shared.services import charging
from shared.store.models import Purchase
from tests.conftest import Server, Tenant, Worker
from tests.e2e.stripe_helpers import (
    buy,
    new_card,
    stripe_client,
    succeeded_charges,
    wait_for,
)
from tests.e2e.test_buying_seats import customer_of

pytestmark = pytest.mark.e2e


@pytest.fixture
def workers(worker_env: dict[str, str], tmp_path: Path) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()


def new_worker(workers: list[Worker], env: dict[str, str], tmp_path: Path, **extra: str) -> Worker:
    worker = Worker(env, tmp_path / f"worker{len(workers)}.log")
    workers.append(worker)
    worker.start(**extra)
    return worker


def purchase_row(runtime: Runtime, purchase_id: int) -> tuple[str, str | None]:
    with runtime.uow() as uow:
        purchase = uow.session.get_one(Purchase, purchase_id)
        return purchase.status, purchase.stripe_payment_intent_id


def wait_file(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"the worker never reached {path.name}"
        time.sleep(0.05)


@pytest.mark.parametrize("step", ["payment_created", "payment_confirmed"])
def test_worker_killed_mid_charge_resumes_with_one_charge(
    step: str,
    stack_runtime: Runtime,
    stack_web: Server,
    worker_env: dict[str, str],
    workers: list[Worker],
    tmp_path: Path,
    stripe_base: str,
) -> None:
    marker = tmp_path / "reached"
    doomed = new_worker(
        workers, worker_env, tmp_path, SEATS_FAILPOINT=step, SEATS_FAILPOINT_FILE=str(marker)
    )
    shop = Tenant(stack_runtime, stack_web.url)
    purchase = buy(shop.buyer, shop.sub, 5, f"kill-{step}", new_card(stripe_base))
    wait_file(marker)
    doomed.kill()

    status, intent = purchase_row(stack_runtime, purchase)
    assert status == "processing" and intent is not None
    already = succeeded_charges(stripe_base, customer_of(stack_runtime, shop.org))
    assert len(already) == (1 if step == "payment_confirmed" else 0)
    plan = shop.owner.get(f"/api/subscriptions/{shop.sub}").json()
    assert (plan["paid_seats"], plan["active_seats"]) == (3, 3)

    new_worker(workers, worker_env, tmp_path)
    done = wait_for(shop.buyer, purchase, timeout=60)
    assert done["status"] == "succeeded", done
    charged = succeeded_charges(stripe_base, customer_of(stack_runtime, shop.org))
    assert len(charged) == 1 and charged[0].amount == done["amount_due"]
    assert purchase_row(stack_runtime, purchase)[1] == intent
    plan = shop.owner.get(f"/api/subscriptions/{shop.sub}").json()
    assert (plan["paid_seats"], plan["active_seats"]) == (5, 5)


def test_flushed_broker_loses_no_purchase(
    stack_runtime: Runtime,
    stack_web: Server,
    worker_env: dict[str, str],
    workers: list[Worker],
    tmp_path: Path,
    stripe_base: str,
    redis_url: str,
) -> None:
    shop = Tenant(stack_runtime, stack_web.url)
    purchase = buy(shop.buyer, shop.sub, 4, "flushed", new_card(stripe_base))
    redis.Redis.from_url(redis_url).flushdb()
    assert purchase_row(stack_runtime, purchase)[0] == "pending"
    new_worker(workers, worker_env, tmp_path)
    done = wait_for(shop.buyer, purchase, timeout=60)
    assert done["status"] == "succeeded", done
    assert len(succeeded_charges(stripe_base, customer_of(stack_runtime, shop.org))) == 1


def intents_for(stripe_base: str, customer: str, purchase_id: int) -> list[dict[str, Any]]:
    """Every PaymentIntent the stand-in holds for this customer that names the purchase
    (the stand-in filters lists by nothing, so all of them are read)."""
    every = stripe_client(stripe_base).v1.payment_intents.list(params={"limit": 100})
    found = []
    for intent in every.auto_paging_iter():
        fields = intent.to_dict()
        names = (fields.get("metadata") or {}).get("purchase_id")
        if fields.get("customer") == customer and names == str(purchase_id):
            found.append(fields)
    return found


def test_the_same_charge_run_concurrently_charges_once(
    stack_runtime: Runtime, stack_web: Server, stripe_base: str, redis_url: str
) -> None:
    shop = Tenant(stack_runtime, stack_web.url)
    purchase = buy(shop.buyer, shop.sub, 6, "twice", new_card(stripe_base))
    redis.Redis.from_url(redis_url).flushdb()
    barrier = threading.Barrier(4)
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=30)
            result = charging.charge(
                stack_runtime.uow(), stack_runtime.engine, stack_runtime.gateway, purchase
            )
            outcomes.append(result.next.value)
        except BaseException as error:  # collected: asserted empty below
            errors.append(error)

    threads = [threading.Thread(target=run, name=f"charger-{i}") for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a charger never returned"
    assert errors == []
    assert len(outcomes) == 4 and "done" in outcomes, outcomes
    assert set(outcomes) <= {"done", "busy"}, outcomes
    for _ in range(2):
        again = charging.charge(
            stack_runtime.uow(), stack_runtime.engine, stack_runtime.gateway, purchase
        )
        assert again.next.value == "done"
    assert purchase_row(stack_runtime, purchase)[0] == "succeeded"
    customer = customer_of(stack_runtime, shop.org)
    intents = intents_for(stripe_base, customer, purchase)
    assert [intent["id"] for intent in intents] == [purchase_row(stack_runtime, purchase)[1]]
    assert intents[0]["status"] == "succeeded"
    charged = succeeded_charges(stripe_base, customer)
    assert [(c.payment_intent, c.amount) for c in charged] == [
        (intents[0]["id"], intents[0]["amount"])
    ]
    plan = shop.owner.get(f"/api/subscriptions/{shop.sub}").json()
    assert (plan["paid_seats"], plan["active_seats"]) == (6, 6)
