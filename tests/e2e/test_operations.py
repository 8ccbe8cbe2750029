"""What operators watch, over real processes: metrics that add up across two gunicorn
workers and the Celery worker, and the names the alert rules and the dashboard use."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from shared.bootstrap import Runtime
from shared.cli.embedded import free_port, wait_for_port
from tests.conftest import ROOT, Server, Tenant, Worker
from tests.e2e.stripe_helpers import buy, new_card, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def gunicorn(worker_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """The web as production runs it: two gunicorn workers with the project's config."""
    port = free_port()
    shared_dir = tmp_path / "prometheus"
    shared_dir.mkdir()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "--config",
            "python:web.gunicorn_conf",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "web:create_app()",
        ],
        env={**worker_env, "PROMETHEUS_MULTIPROC_DIR": str(shared_dir)},
        cwd=ROOT,
        stdout=(tmp_path / "gunicorn.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def scrape(base: str) -> dict[str, float]:
    """Every sample of one scrape, by name and sorted labels."""
    text = requests.get(f"{base}/metrics", timeout=10).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    wanted = [f"{k}={v}" for k, v in labels.items()]
    return sum(
        value
        for key, value in samples.items()
        if key.startswith(name + "{") and all(part in key for part in wanted)
    )


def test_http_counters_add_up_across_gunicorn_workers_and_never_go_back(gunicorn: str) -> None:
    session = requests.Session()
    session.headers["Connection"] = "close"  # spread the requests over both workers
    for _ in range(40):
        assert session.get(f"{gunicorn}/healthz", timeout=10).status_code == 200
    seen = []
    for _ in range(8):
        samples = scrape(gunicorn)
        seen.append(total(samples, "seats_http_requests_total", endpoint="health.healthz"))
    assert seen[0] >= 40
    assert seen == sorted(seen), f"a counter went backwards between scrapes: {seen}"
    assert len(set(seen)) == 1, "health was not called between scrapes"


def test_a_purchase_moves_the_gauges_and_the_worker_reports_its_tasks(
    gunicorn: str, stack_runtime: Runtime, stack_web: Server, worker: Worker, stripe_base: str
) -> None:
    before = scrape(gunicorn)
    assert total(before, "seats_workers_online") >= 1
    shop = Tenant(stack_runtime, stack_web.url)
    purchase = buy(shop.buyer, shop.sub, 5, "metrics-1", new_card(stripe_base))
    assert wait_for(shop.buyer, purchase)["status"] == "succeeded"
    deadline = time.monotonic() + 30
    while True:
        after = scrape(gunicorn)
        charged = total(after, "seats_task_seconds_count", task="seats.charge_purchase")
        if charged > total(before, "seats_task_seconds_count", task="seats.charge_purchase"):
            break
        assert time.monotonic() < deadline, "the worker never reported its charge task"
        time.sleep(0.5)
    succeeded = "seats_purchases{status=succeeded}"
    assert after[succeeded] == before.get(succeeded, 0) + 1
    assert total(after, "seats_queue_wait_seconds_count", task="seats.charge_purchase") >= 1
    for queue in ("charges", "renewals", "webhooks", "default"):
        assert f"seats_queue_depth{{queue={queue}}}" in after
        assert f"seats_queue_oldest_seconds{{queue={queue}}}" in after


def referenced_metrics() -> set[str]:
    rules = (ROOT / "ops/prometheus/alerts.yml").read_text()
    dashboard = json.loads((ROOT / "ops/grafana/seat-billing.json").read_text())
    exprs = [rules] + [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    names = set()
    for expr in exprs:
        code = re.sub(r'"[^"]*"', '""', expr)  # label values (alert kinds) are not metrics
        for name in re.findall(r"\bseats_[a-z_]+", code):
            names.add(re.sub(r"_(bucket|count|sum|total)$", "", name))
    return names


def test_every_metric_the_alerts_and_the_dashboard_use_is_exported(gunicorn: str) -> None:
    requests.get(f"{gunicorn}/healthz", timeout=10)
    families = {
        family.name
        for family in text_string_to_metric_families(
            requests.get(f"{gunicorn}/metrics", timeout=10).text
        )
    }
    missing = referenced_metrics() - families
    assert referenced_metrics() and not missing, missing


def test_readyz_needs_a_worker(gunicorn: str, worker: Worker) -> None:
    ready = requests.get(f"{gunicorn}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["workers"] >= 1, ready.text
    worker.stop()
    try:
        deadline = time.monotonic() + 45
        while requests.get(f"{gunicorn}/readyz", timeout=10).status_code != 503:
            assert time.monotonic() < deadline, "readyz still says ready with no worker"
            time.sleep(1)
        assert requests.get(f"{gunicorn}/healthz", timeout=10).status_code == 200
        probe = subprocess.run(
            [sys.executable, "-m", "worker.health"],
            env={"REDIS_URL": worker.env["REDIS_URL"], "PATH": "/usr/bin:/bin"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert probe.returncode == 1 and "no fresh heartbeat" in probe.stderr
    finally:
        worker.start()
    deadline = time.monotonic() + 30
    while True:  # the restarted worker's first heartbeat
        probe = subprocess.run(
            [sys.executable, "-m", "worker.health"],
            env={"REDIS_URL": worker.env["REDIS_URL"], "PATH": "/usr/bin:/bin"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if probe.returncode == 0:
            break
        assert time.monotonic() < deadline, probe.stderr
        time.sleep(1)
