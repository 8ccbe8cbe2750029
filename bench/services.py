"""CPU per purchase step in one process: the cart add, the checkout, the charge and the
webhooks it causes, called one after another against the machine's PostgreSQL with the
in-memory Stripe.

The pipeline benchmarks (`purchases.py`) move 20 to 40% from one run to the next on a
shared machine; this one measures only our own code and its statements, one call at a
time, so two commits compared back to back differ by what changed:

    .venv/bin/python bench/services.py [--purchases 300] [--profile charge] [--json FILE]

Prints, per step, wall and CPU milliseconds per call (the CPU of this process only:
PostgreSQL's own is not in it). The webhooks step hands each purchase's events of the types
the endpoint is subscribed to, as Stripe sends them (indented JSON), to the service the
web's endpoint calls once the signature is checked (`webhooks.receive`). `--profile STEP`
adds cProfile's top functions for that step, timed by CPU.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from harness import scratch_database

from shared.bootstrap import build
from shared.config import Settings
from shared.payments.fake_stripe import FakeStripe
from shared.services import cart, charging, checkout, provisioning, webhooks
from shared.services.access import Actor

STEPS = ("add", "checkout", "charge", "webhooks")


def measure(
    name: str,
    count: int,
    step: Callable[[int], Any],
    profile: str | None,
    spent: dict[str, Any],
) -> list[Any]:
    profiler = cProfile.Profile(time.process_time) if profile == name else None
    began, cpu = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    results = [step(i) for i in range(count)]
    if profiler:
        profiler.disable()
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    spent[name] = {"wall_ms": 1000 * wall / count, "cpu_ms": 1000 * cpu / count}
    print(
        f"{name:9s} {spent[name]['wall_ms']:7.3f} ms wall  "
        f"{spent[name]['cpu_ms']:7.3f} ms CPU per call"
    )
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--purchases", type=int, default=300)
    parser.add_argument("--profile", choices=STEPS)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    os.environ.setdefault("STRIPE_API_KEY", "sk_test_services_bench")
    with scratch_database() as url:
        runtime = build(replace(Settings.from_env(), database_url=url))
        stripe = FakeStripe()
        started = date.today() - timedelta(days=100)
        buyers: list[tuple[Actor, int]] = []
        for i in range(args.purchases + 1):
            uow = runtime.uow
            org = provisioning.create_organization(uow(), f"Bench {i}", "cad", "America/Toronto")
            user, _ = provisioning.create_user(uow(), org, f"buyer-{i}@bench.example.com", "buyer")
            plan = provisioning.create_subscription(uow(), org, "XLGL", 36500, "year", 3, started)
            buyers.append((Actor(user, org, "buyer"), plan))
            # each organization's Stripe customer exists, as after its first purchase
            charging.stripe_customer(uow(), stripe, org)
        warm, plan = buyers.pop()  # every statement compiled and every pool filled once
        cart.add_item(runtime.uow(), warm, plan, 4, True)
        first, _, _ = checkout.checkout(runtime.uow(), warm, "warm", stripe.card())
        charging.charge(runtime.uow(), runtime.engine, stripe, first)
        count = len(buyers)
        spent: dict[str, Any] = {}
        print(f"{count} purchases, one plan each, a new card each; in-memory Stripe")
        measure(
            "add",
            count,
            lambda i: cart.add_item(runtime.uow(), buyers[i][0], buyers[i][1], 5, True),
            args.profile,
            spent,
        )
        keys = [secrets.token_hex(8) for _ in range(count)]
        cards = [stripe.card() for _ in range(count)]
        bought = measure(
            "checkout",
            count,
            lambda i: checkout.checkout(runtime.uow(), buyers[i][0], keys[i], cards[i])[0],
            args.profile,
            spent,
        )
        marks = [len(stripe.events)]

        def charge(i: int) -> charging.Outcome:
            outcome = charging.charge(runtime.uow(), runtime.engine, stripe, bought[i])
            marks.append(len(stripe.events))
            return outcome

        outcomes = measure("charge", count, charge, args.profile, spent)
        done = sum(1 for outcome in outcomes if outcome.next == charging.Next.DONE)
        print(f"charged: {done}/{count} done")
        bodies = [
            [
                json.dumps(event, indent=2).encode()
                for event in stripe.events[marks[i] : marks[i + 1]]
                if event["type"] in webhooks.HANDLED_EVENTS
            ]
            for i in range(count)
        ]
        stored = measure(
            "webhooks",
            count,
            lambda i: [webhooks.receive(runtime.uow(), body) for body in bodies[i]],
            args.profile,
            spent,
        )
        events = sum(len(outcomes) for outcomes in stored)
        print(f"webhooks: {events} events, {events / count:.1f} per purchase")
        if args.json:
            args.json.write_text(
                json.dumps({"purchases": count, "done": done, "events": events, **spent})
            )
        runtime.engine.dispose()


if __name__ == "__main__":
    main()
