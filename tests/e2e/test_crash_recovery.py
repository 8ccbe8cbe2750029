"""A killed worker, a flushed broker, a charge run twice at once: one purchase, one charge."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shared.bootstrap import Runtime
from shared.services import charging
from shared.store.models import Purchase
from tests.conftest import Server, Tenant, Worker
from tests.e2e.stripe_helpers import buy, new_card, succeeded_charges, wait_for
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


def test_the_same_charge_run_concurrently_charges_once(
    stack_runtime: Runtime, stack_web: Server, stripe_base: str, redis_url: str
) -> None:
    shop = Tenant(stack_runtime, stack_web.url)
    purchase = buy(shop.buyer, shop.sub, 6, "twice", new_card(stripe_base))
    redis.Redis.from_url(redis_url).flushdb()
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def run() -> None:
        barrier.wait()
        result = charging.charge(
            stack_runtime.uow(), stack_runtime.engine, stack_runtime.gateway, purchase
        )
        outcomes.append(result.next.value)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for _ in range(2):
        charging.charge(stack_runtime.uow(), stack_runtime.engine, stack_runtime.gateway, purchase)
    assert "done" in outcomes
    assert purchase_row(stack_runtime, purchase)[0] == "succeeded"
    assert len(succeeded_charges(stripe_base, customer_of(stack_runtime, shop.org))) == 1
    plan = shop.owner.get(f"/api/subscriptions/{shop.sub}").json()
    assert (plan["paid_seats"], plan["active_seats"]) == (6, 6)
