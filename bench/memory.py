"""A worker's resident memory over 10,000 tasks: it must level off, not climb.

Against a throw-away PostgreSQL database and Redis db 13: stores ``--tasks`` Stripe events
of a handled type (``payment_intent.succeeded`` for intents that are not ours: each task
claims the event, reads, and records ``ignored``, no Stripe call), starts one Celery
worker as deployed (``--pool threads``, ``SEATS_WORKER_CONCURRENCY`` threads, queue
``webhooks``), sends one ``seats.process_event`` per event, and samples the worker's
resident set size (psutil, the process and any children) every 0.2 s while counting
handled events in the database.

Reported: RSS at start, after the first tenth (warm), at the end and its peak; the growth
per 1,000 tasks after the first tenth (least squares over the samples). A leak shows as a
steady slope; a warm-up as a step in the first tenth.

    .venv/bin/python bench/memory.py [--tasks 10000] [--threads 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
from dataclasses import replace
from pathlib import Path

import psutil
from harness import (
    REDIS_URL,
    Processes,
    celery_argv,
    celery_client,
    log_folder,
    machine_facts,
    python_env,
    reset_redis,
    scratch_database,
    terminate_on_sigterm,
    wait_worker,
)
from sqlalchemy import func, select

from shared import queues
from shared.bootstrap import build
from shared.config import LOCALSTRIPE_KEY, Settings
from shared.services import webhooks
from shared.store.models import WebhookEvent

MIB = 1024 * 1024


def stranger_payment(created: int) -> dict[str, object]:
    """A `payment_intent.succeeded` for someone else's intent: handled, then `ignored`."""
    return {
        "id": f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": created,
        "data": {
            "object": {
                "id": f"pi_{secrets.token_hex(8)}",
                "object": "payment_intent",
                "amount": 36301,
                "currency": "cad",
                "status": "succeeded",
                "metadata": {},
            }
        },
    }


def rss(pid: int) -> int:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def slope(points: list[tuple[int, int]]) -> float:
    """Least-squares bytes per task."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    terminate_on_sigterm()
    reset_redis(REDIS_URL)
    samples: list[tuple[int, int]] = []  # (tasks handled, RSS bytes)
    try:
        with (
            log_folder(args.keep_logs) as logs,
            scratch_database() as database_url,
            Processes(logs) as processes,
        ):
            settings = replace(
                Settings.from_env({}),
                database_url=database_url,
                redis_url=REDIS_URL,
                stripe_api_key=LOCALSTRIPE_KEY,
            )
            runtime = build(settings, pool_size=2)
            now = int(time.time())
            ids: list[str] = []
            for start in range(0, args.tasks, 1000):
                batch = [stranger_payment(now) for _ in range(min(1000, args.tasks - start))]
                ids += webhooks.store_events(runtime.uow(), batch, "webhook")
            env = python_env(
                DATABASE_URL=database_url,
                REDIS_URL=REDIS_URL,
                STRIPE_API_KEY=LOCALSTRIPE_KEY,
                STRIPE_API_BASE="http://127.0.0.1:9",  # nothing here calls Stripe
                STRIPE_WEBHOOK_SECRET="whsec_bench",
                SEATS_WORKER_CONCURRENCY=str(args.threads),
            )
            worker = processes.spawn(
                "worker", celery_argv(queues.WEBHOOKS, args.threads, pool="threads"), env
            )
            app = celery_client(REDIS_URL)
            wait_worker(app, processes)
            samples.append((0, rss(worker.pid)))
            send = queues.Dispatcher(app.send_task)
            send.process_event(*ids)
            began = time.perf_counter()
            deadline = time.monotonic() + args.timeout
            handled = 0
            while handled < len(ids) and time.monotonic() < deadline:
                processes.check_alive()
                time.sleep(0.2)
                with runtime.uow() as uow:
                    handled = int(
                        uow.session.scalar(
                            select(func.count()).where(WebhookEvent.outcome.is_not(None))
                        )
                        or 0
                    )
                samples.append((handled, rss(worker.pid)))
            seconds = time.perf_counter() - began
            runtime.engine.dispose()
    finally:
        reset_redis(REDIS_URL)
    tenth = len(ids) // 10
    warm = next((y for x, y in samples if x >= tenth), samples[-1][1])
    growth = slope([(x, y) for x, y in samples if x >= tenth]) * 1000
    peak = max(y for _, y in samples)
    figures = {
        "tasks": len(ids),
        "handled": handled,
        "seconds": seconds,
        "rss_start_mib": samples[0][1] / MIB,
        "rss_warm_mib": warm / MIB,
        "rss_end_mib": samples[-1][1] / MIB,
        "rss_peak_mib": peak / MIB,
        "growth_kib_per_1000_tasks": growth / 1024,
    }
    print(f"{machine_facts()} worker --pool threads x {args.threads}, queue webhooks")
    print(
        f"{handled}/{len(ids)} tasks handled in {seconds:.1f} s ({handled / seconds:.0f}/s); "
        f"worker RSS: start {figures['rss_start_mib']:.1f} MiB, after {tenth:,} tasks "
        f"{figures['rss_warm_mib']:.1f} MiB, end {figures['rss_end_mib']:.1f} MiB, "
        f"peak {figures['rss_peak_mib']:.1f} MiB; growth after the first tenth "
        f"{figures['growth_kib_per_1000_tasks']:.0f} KiB per 1,000 tasks"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
