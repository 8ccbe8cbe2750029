"""Every benchmark in one run, and one Markdown table of what they measured.

`bench/run` calls this. Each benchmark runs as its own process (the scripts beside this
one, with ``--json``), one after the other so none measures another's load; then one
table: each figure, its reference (the same work without our stack, or the target),
the ratio, and whether the target holds, with the machine's description. ``--readme``
also puts the table in README.md between its ``bench:start`` and ``bench:end`` marks.

    bench/run [--quick] [--only NAME ...] [--skip NAME ...] [--readme] [--out FILE]

``--quick`` runs smaller sizes (a few minutes, to check that everything runs); the
figures in the README come from a full run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
README = ROOT / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


@dataclass
class Bench:
    name: str
    script: str
    full: list[str]
    quick: list[str]


BENCHES = [
    Bench("purchases", "purchases.py", [], ["--plans", "40", "--rounds", "1"]),
    # our own code alone, in one process: the steady figure beside the pipeline's
    Bench("services", "services.py", [], ["--purchases", "100"]),
    # the charge alone, its webhooks sent nowhere: comparable with the figures of issue 13
    Bench(
        "purchases-no-webhooks",
        "purchases.py",
        ["--no-webhooks"],
        ["--no-webhooks", "--plans", "40", "--rounds", "1"],
    ),
    Bench(
        "purchases-latency",
        "purchases.py",
        ["--latency-ms", "100"],
        ["--latency-ms", "100", "--plans", "40", "--rounds", "1"],
    ),
    Bench(
        "webhooks", "webhooks.py", [], ["--unique", "1000", "--duplicates", "200", "--rounds", "1"]
    ),
    # 2,000 plans keep the whole report near a quarter of an hour; the README's 10,000-plan
    # figures come from `bench/renewals.py` on its own
    Bench("renewals", "renewals.py", ["--plans", "2000"], ["--plans", "500", "--sample", "50"]),
    Bench(
        "metrics",
        "metrics.py",
        [],
        ["--purchases", "10000", "--events", "10000", "--scrapes", "10"],
    ),
    Bench("memory", "memory.py", [], ["--tasks", "2000"]),
    # what the required parts cost alone: the floor under the two rows above it
    Bench("floor", "floor.py", [], ["--count", "1000"]),
    Bench(
        "scale-out",
        "purchases.py",
        ["--worker-processes", "2", "--web-processes", "2", "--latency-ms", "100"],
        ["--worker-processes", "2", "--latency-ms", "100", "--plans", "40", "--rounds", "1"],
    ),
    Bench(
        "pgbouncer",
        "purchases.py",
        ["--worker-processes", "2", "--latency-ms", "100", "--pgbouncer"],
        [
            "--worker-processes",
            "2",
            "--latency-ms",
            "100",
            "--pgbouncer",
            "--plans",
            "40",
            "--rounds",
            "1",
        ],
    ),
]


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(
        int(line.split()[1]) // 1024 // 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )

    def version(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return "?"

    postgres = version(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc", "SHOW server_version"]
    ).split(" ")[0]
    redis = re.sub(r".*v=(\S+).*", r"\1", version(["redis-server", "--version"]))
    return (
        f"{os.cpu_count()} cores ({model}), {memory} GiB, Python {platform.python_version()}, "
        f"PostgreSQL {postgres}, Redis {redis}, {platform.system()} {platform.release()}"
    )


def run(bench: Bench, quick: bool, folder: Path) -> dict[str, Any] | None:
    out = folder / f"{bench.name}.json"
    argv = [sys.executable, str(HERE / bench.script), *(bench.quick if quick else bench.full)]
    print(f"--- {bench.name}: {' '.join(argv[1:])}", flush=True)
    began = time.monotonic()
    done = subprocess.run([*argv, "--json", str(out)], cwd=ROOT, check=False)
    print(
        f"--- {bench.name}: exit {done.returncode} in {time.monotonic() - began:.0f} s", flush=True
    )
    if done.returncode != 0 or not out.exists():
        return None
    figures: dict[str, Any] = json.loads(out.read_text())
    return figures


Row = tuple[str, str, str, str, str]
STEPS = ("add", "checkout", "charge", "webhooks")


def ratio(figure: float, reference: float) -> str:
    return f"{figure / reference:.2f}" if reference else "n/a"


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def purchase_rows(name: str, r: dict[str, Any], target: float) -> list[Row]:
    pipeline, direct = r["rates"].get("pipeline", 0.0), r["rates"].get("direct", 0.0)
    per = r["per_purchase"]
    rows: list[Row] = [
        (
            f"{name}: purchases/s through web, queue, worker, database ({r['setup']})",
            f"{pipeline:.1f}/s",
            f"{direct:.1f}/s, the same Stripe calls made directly",
            ratio(pipeline, direct),
            f">= {target}: {verdict(direct > 0 and pipeline / direct >= target)}",
        )
    ]
    if "cpu ms all processes" in per:
        by = ", ".join(
            f"{k[7:]} {v:.1f}"
            for k, v in sorted(per.items(), key=lambda kv: -kv[1])
            if k.startswith("cpu ms ") and k != "cpu ms all processes"
        )
        rows.append(
            (
                f"{name}: CPU ms per purchase, all processes ({by})",
                f"{per['cpu ms all processes']:.1f} ms",
                f"{per.get('direct cpu ms all processes', 0):.1f} ms direct",
                ratio(per["cpu ms all processes"], per.get("direct cpu ms all processes", 0)),
                f"<= 30 ms: {verdict(per['cpu ms all processes'] <= 30)}",
            )
        )
    if "round trips" in per:
        rows.append(
            (
                f"{name}: PostgreSQL per purchase, web + worker + its webhooks",
                f"{per['round trips']:.1f} round trips",
                f"{per['statements']:.1f} statements, {per['transactions']:.1f} transactions "
                f"({per.get('rolled back', 0.0):.2f} rolled back)",
                "",
                f"<= 30: {verdict(per['round trips'] <= 30)}",
            )
        )
        rows.append(
            (
                f"{name}: messages / charge tasks per purchase",
                f"{per['messages']:.2f} / {per['charge tasks']:.2f}",
                "",
                "",
                "",
            )
        )
    return rows


def floor_rows(results: dict[str, dict[str, Any]]) -> list[Row]:
    """The least the required parts add up to (bench/floor.py), beside the targets.

    Per purchase: the Stripe calls as made directly (SDK and stand-in, from the purchase
    benchmark), two requests through our app, one Celery message, two transactions and one
    statement, and two webhooks through our view; the client's own HTTP calls left out.
    Per webhook: the bare app's whole cost per request plus storing the event and, for half
    of them, the drain mark; any endpoint that stores before it answers pays that much."""
    floor = results.get("floor")
    if not floor:
        return []
    cost = {name: figures["all"] / 1000 for name, figures in floor.items() if name != "setup"}
    rows: list[Row] = []
    per = results.get("purchases", {}).get("per_purchase", {})
    direct = per.get("direct cpu ms all processes", 0.0)
    if direct:
        least = (
            direct
            + 2 * cost["flask ours"]
            + cost["celery message"]
            + 2 * cost["transaction"]
            + cost["select 1"]
            + 2 * cost["webhook view"]
        )
        rows.append(
            (
                "floor: CPU ms per purchase the required parts add up to (direct Stripe calls "
                f"{direct:.1f}, 2 requests, 1 message, 2 transactions, 2 webhooks)",
                f"{least:.1f} ms",
                f"{per.get('cpu ms all processes', 0):.1f} ms measured",
                f"at most {ratio(direct, least)} of direct",
                f"<= 30 ms: {verdict(least <= 30)}",
            )
        )
    bare = results.get("webhooks", {}).get("bare", {}).get("cpu_ms_per_request", 0.0)
    if bare:
        stored = bare + cost["store event"] + cost["redis set nx"] / 2
        rows.append(
            (
                "floor: CPU ms per webhook, a bare request + storing the event + the drain mark",
                f"{stored:.2f} ms",
                f"{bare:.2f} ms, the bare app",
                f"at most {ratio(bare, stored)}",
                f">= 0.6: {verdict(bare / stored >= 0.6)}",
            )
        )
    return rows


def table(results: dict[str, dict[str, Any]]) -> list[Row]:
    rows: list[Row] = []
    if "purchases" in results:
        rows += purchase_rows("no latency", results["purchases"], 0.5)
    if "purchases-no-webhooks" in results:
        rows += purchase_rows("no webhooks", results["purchases-no-webhooks"], 0.5)[:3]
    if "services" in results:
        steps = results["services"]
        by = ", ".join(f"{step} {steps[step]['cpu_ms']:.1f}" for step in STEPS)
        rows.append(
            (
                f"our own code per purchase, one process, in-memory Stripe ({by})",
                f"{sum(steps[step]['cpu_ms'] for step in STEPS):.1f} ms CPU",
                f"{steps['done']}/{steps['purchases']} charged",
                "",
                "",
            )
        )
    if "purchases-latency" in results:
        rows += purchase_rows("100 ms per Stripe call", results["purchases-latency"], 0.8)[:1]
    for name in ("scale-out", "pgbouncer"):
        if name in results:
            r = results[name]
            pipeline = r["rates"].get("pipeline", 0.0)
            single = results.get("purchases-latency", {}).get("rates", {}).get("pipeline", 0.0)
            rows.append(
                (
                    f"{name}: purchases/s ({r['setup']})",
                    f"{pipeline:.1f}/s",
                    f"{single:.1f}/s with one worker" if single else "",
                    ratio(pipeline, single) if single else "",
                    "",
                )
            )
    if "webhooks" in results:
        w = results["webhooks"]
        bare = w["bare"]["rate"]
        for kind in ("paused", "running"):
            rows.append(
                (
                    f"webhook events accepted/s, worker {kind} (p99 {w[kind]['p99_ms']:.0f} ms)",
                    f"{w[kind]['rate']:.0f}/s",
                    f"{bare:.0f}/s, a bare one-route Flask app",
                    ratio(w[kind]["rate"], bare),
                    f">= 0.6 and p99 < 50 ms: "
                    f"{verdict(w[kind]['rate'] / bare >= 0.6 and w[kind]['p99_ms'] < 50)}",
                )
            )
        rows.append(
            (
                "webhook events processed/s by the worker",
                f"{w.get('worker_rate', 0):.0f}/s",
                "",
                "",
                f">= 500: {verdict(w.get('worker_rate', 0) >= 500)}",
            )
        )
    rows += floor_rows(results)
    if "renewals" in results:
        r = results["renewals"]
        plans = r["plans"]
        rows.append(
            (
                f"renewals/s, {plans:,} plans due the same day ({r.get('settled', '')} settled)",
                f"{r.get('settle_rate', 0):.1f}/s",
                f"{r.get('direct_rate', 0):.1f}/s direct",
                ratio(r.get("settle_rate", 0), r.get("direct_rate", 0)),
                "",
            )
        )
        if f"scan_seconds_{plans}" in r:
            rows.append(
                (
                    f"renewal scan of {plans:,} due plans",
                    f"{r[f'scan_seconds_{plans}']:.2f} s",
                    f"heap peak {r[f'scan_heap_peak_kib_{plans}']:.0f} KiB",
                    "",
                    "",
                )
            )
    if "metrics" in results:
        m = results["metrics"]
        rows.append(
            (
                f"/metrics scrape, {m['purchases']:,} purchases and {m['events']:,} events",
                f"{m['median_ms']:.0f} ms (p95 {m['p95_ms']:.0f})",
                "",
                "",
                f"< 200 ms: {verdict(m['p95_ms'] < 200)}",
            )
        )
    if "memory" in results:
        m = results["memory"]
        rows.append(
            (
                f"worker RSS over {m['tasks']:,} tasks (start / after a tenth / end)",
                f"{m['rss_start_mib']:.0f} / {m['rss_warm_mib']:.0f} / {m['rss_end_mib']:.0f} MiB",
                f"{m['growth_kib_per_1000_tasks']:.0f} KiB per 1,000 tasks after warm-up",
                "",
                "",
            )
        )
    return rows


def markdown(rows: list[Row], results: dict[str, Any], failed: list[str], quick: bool) -> str:
    lines = [
        f"Measured by `bench/run{' --quick' if quick else ''}` on "
        f"{datetime.now(UTC):%Y-%m-%d}: {machine()}.",
        "",
        "| what | figure | reference | ratio | target met |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    if failed:
        lines += ["", f"Did not finish: {', '.join(failed)}."]
    return "\n".join(lines) + "\n"


def put_in_readme(text: str) -> None:
    readme = README.read_text()
    if START not in readme or END not in readme:
        raise SystemExit(f"README.md has no {START} ... {END} section")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{text}{END}{tail}")


def main() -> None:
    names = [b.name for b in BENCHES]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--only", action="append", choices=names, default=[])
    parser.add_argument("--skip", action="append", choices=names, default=[])
    parser.add_argument("--readme", action="store_true", help="put the table in README.md")
    parser.add_argument("--out", type=Path, default=HERE / "report.md")
    args = parser.parse_args()
    chosen = [b for b in BENCHES if (not args.only or b.name in args.only)]
    chosen = [b for b in chosen if b.name not in args.skip]
    results: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="seats-report-") as folder:
        for bench in chosen:
            figures = run(bench, args.quick, Path(folder))
            if figures is None:
                failed.append(bench.name)
            else:
                results[bench.name] = figures
    text = markdown(table(results), results, failed, args.quick)
    args.out.write_text(text)
    write: Callable[[str], None] = put_in_readme if args.readme else (lambda _: None)
    write(text)
    print()
    print(text)
    print(f"report in {args.out} ({time.monotonic() - started:.0f} s)")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
