"""How long a Prometheus scrape takes with a busy database behind it.

    .venv/bin/python bench/metrics.py [--purchases 100000] [--events 100000] [--scrapes 30]

Fills a scratch database (dropped at the end) with purchases in every status, their
failure codes, renewals, plans and alerts, and stored Stripe events with every outcome,
then scrapes `/metrics` through the app (in this process, so the figure is the app's
own work: the database queries, the Redis reads and the rendering). Target: under
200 ms with 100,000 purchases and 100,000 events (README "Benchmarks").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import REDIS_URL, scratch_database
from sqlalchemy import create_engine, text

from shared.bootstrap import build
from shared.config import LOCALSTRIPE_KEY, Settings

FILL = [
    "INSERT INTO organizations (name, currency, timezone) "
    "SELECT 'Org ' || g, 'cad', 'America/Toronto' FROM generate_series(1, :orgs) g",
    "INSERT INTO users (organization_id, email, role, token_hash) "
    "SELECT g, 'u' || g || '@example.com', 'buyer', md5(g::text) || md5((g + 1)::text) "
    "FROM generate_series(1, :orgs) g",
    "INSERT INTO subscriptions (organization_id, product, unit_amount, currency, interval, "
    "current_period_start, renews_at, paid_seats, active_seats, anchor_day, status) "
    "SELECT g, 'XLGL', 50000, 'cad', 'year', current_date - 100, current_date + 265 - (g % 300), "
    "3, 3, 15, (ARRAY['active', 'active', 'active', 'past_due', 'suspended'])[1 + g % 5] "
    "FROM generate_series(1, :orgs) g",
    "INSERT INTO purchases (organization_id, user_id, idempotency_key, status, currency, "
    "confirmed_amount, amount_due, payment_method_id, new_card, attempts, failure_code, "
    "created_at, updated_at) "
    "SELECT 1 + g % :orgs, 1 + g % :orgs, 'k' || g, "
    "(ARRAY['succeeded', 'succeeded', 'succeeded', 'failed', 'pending', 'processing', "
    "'requires_action'])[1 + g % 7], 'cad', 1000, 1000, 'pm_x', false, 1, "
    "CASE WHEN g % 7 = 3 THEN (ARRAY['card_declined', 'expired_card', 'already_paid'])"
    "[1 + g % 3] END, now() - (g || ' seconds')::interval, now() "
    "FROM generate_series(1, :purchases) g",
    "INSERT INTO webhook_events (id, type, object_id, payload, source, received_at, "
    "processed_at, outcome, attempts) "
    "SELECT 'evt_' || g, 'payment_intent.succeeded', 'pi_' || g, '{}'::jsonb, 'webhook', "
    "now() - (g || ' seconds')::interval, now() - (g || ' seconds')::interval + "
    "interval '40 milliseconds', (ARRAY['processed', 'processed', 'ignored', 'failed', "
    "NULL])[1 + g % 5], 1 FROM generate_series(1, :events) g",
    "INSERT INTO renewals (subscription_id, organization_id, period_start, status, currency, "
    "attempts) SELECT g, g, current_date, (ARRAY['succeeded', 'failed', 'pending'])[1 + g % 3], "
    "'cad', 1 FROM generate_series(1, :orgs) g",
    "INSERT INTO operator_alerts (kind, message) "
    "SELECT (ARRAY['refund', 'dispute', 'late_payment'])[1 + g % 3], 'm' "
    "FROM generate_series(1, 300) g",
    "VACUUM ANALYZE",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--purchases", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--orgs", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=30)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with scratch_database() as url:
        started = time.perf_counter()
        engine = create_engine(url, isolation_level="AUTOCOMMIT")  # VACUUM needs it
        with engine.connect() as connection:
            for statement in FILL:
                connection.execute(
                    text(statement),
                    {"orgs": args.orgs, "purchases": args.purchases, "events": args.events},
                )
        engine.dispose()
        filled = time.perf_counter() - started
        settings = replace(
            Settings.from_env({}),
            database_url=url,
            redis_url=REDIS_URL,
            stripe_api_key=LOCALSTRIPE_KEY,
            stripe_webhook_secret="whsec_bench",
        )
        runtime = build(settings, pool_size=2)
        from web import create_app

        client = create_app(runtime=runtime).test_client()
        first = client.get("/metrics")
        assert first.status_code == 200, first.text
        durations = []
        for _ in range(args.scrapes):
            began = time.perf_counter()
            answer = client.get("/metrics")
            durations.append((time.perf_counter() - began) * 1000)
            assert answer.status_code == 200
        runtime.engine.dispose()
    lines = first.text.count("\n")
    durations.sort()
    p95 = durations[max(0, int(len(durations) * 0.95) - 1)]
    print(
        f"{args.purchases:,} purchases, {args.events:,} events, {args.orgs:,} plans and "
        f"renewals (filled in {filled:.1f} s); {lines} lines per scrape"
    )
    print(
        f"scrape: median {statistics.median(durations):.1f} ms, p95 {p95:.1f} ms, "
        f"max {durations[-1]:.1f} ms over {args.scrapes} scrapes (target: under 200 ms)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "purchases": args.purchases,
                    "events": args.events,
                    "median_ms": statistics.median(durations),
                    "p95_ms": p95,
                    "lines": lines,
                }
            )
        )


if __name__ == "__main__":
    main()
