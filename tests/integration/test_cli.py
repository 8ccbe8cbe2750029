"""The `seats` console script, run as an operator runs it: a real process on a real database."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Engine, create_engine, inspect, text

from shared.bootstrap import Runtime
from shared.cli import main
from shared.domain.errors import Conflict
from shared.services import operations, provisioning, webhooks
from shared.store.db import UnitOfWork, make_session_factory, upgrade
from tests.conftest import Client, Server
from web.errors import refused

SCRIPT = Path(sys.executable).with_name("seats")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "shared.cli"]
TABLES = ("organizations", "users", "subscriptions", "seat_changes")


@dataclass
class Run:
    args: list[str]
    code: int
    stdout: str
    stderr: str

    def object(self) -> dict[str, Any]:
        """With --json stdout is exactly one JSON object: json.loads refuses anything more."""
        value = json.loads(self.stdout)
        assert isinstance(value, dict), self.stdout
        return value


IN_PROCESS = threading.Lock()


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """The test's values; SEATS_HOME empty, so no `seats up` running on this machine is
    taken for the stack (its stack file lives there)."""
    saved = dict(os.environ)
    os.environ["SEATS_HOME"] = tempfile.mkdtemp(prefix="seats-home-")
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_seats(
    database_url: str,
    *args: str,
    cwd: Path | None = None,
    process: bool = False,
    env: dict[str, str] | None = None,
) -> Run:
    """The command's own `main`, in this process (a process costs a second of CPU); with
    `process=True`, the installed console script in a process of its own, as a person runs it."""
    if not process:
        out, err = io.StringIO(), io.StringIO()
        with (
            IN_PROCESS,
            environment(DATABASE_URL=database_url, **(env or {})),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            try:
                main(list(args))
                code = 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        return Run(list(args), code, out.getvalue(), err.getvalue())
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SEATS_HOME")}
    env["DATABASE_URL"] = database_url
    done = subprocess.run(
        [*COMMAND, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )
    return Run(list(args), done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def seats_cli(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Run]:
    """The command against the session's database, from a directory that is not the project."""
    where = tmp_path_factory.mktemp("cli")

    def call(*args: str, process: bool = False) -> Run:
        return run_seats(database_url, *args, cwd=where, process=process)

    return call


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    value = create_engine(database_url)
    yield value
    value.dispose()


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()  # noqa: S608
            for table in TABLES
        }


def ok(run: Run) -> dict[str, Any]:
    assert run.code == 0, (run.args, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    return run.object()


@dataclass
class Org:
    id: int
    owner_email: str
    owner: Client


@pytest.fixture(scope="module")
def org(seats_cli: Callable[..., Run], web: Server) -> Org:
    """An organization and its owner, both made with the command line."""
    org_id = ok(seats_cli("org", "create", "--name", "CLI Org", "--json"))["id"]
    email = "Owner@cli.example"
    token = ok(
        seats_cli(
            "user", "create", "--org", str(org_id), "--email", email, "--role", "owner", "--json"
        )
    )["token"]
    return Org(org_id, email, Client(web.url, token))


def test_db_upgrade_builds_an_empty_database_and_is_repeatable(
    fresh_database: Callable[[], str],
) -> None:
    url = fresh_database()
    first = run_seats(url, "db", "upgrade", "--json", process=True)
    assert ok(first)["status"] == "ok"
    engine = create_engine(url)
    try:
        assert {
            "organizations",
            "users",
            "subscriptions",
            "seat_changes",
            "purchases",
            "alembic_version",
        } <= set(inspect(engine).get_table_names())
        second = run_seats(url, "db", "upgrade", "--json")
        assert ok(second) == ok(first)
        with engine.connect() as connection:
            assert len(connection.execute(text("SELECT * FROM alembic_version")).all()) == 1
    finally:
        engine.dispose()


def test_org_create_prints_its_id(seats_cli: Callable[..., Run], engine: Engine) -> None:
    body = ok(
        seats_cli(
            "org",
            "create",
            "--name",
            "Tremblay & Fils",
            "--currency",
            "CAD",
            "--timezone",
            "America/Vancouver",
            "--json",
        )
    )
    assert set(body) == {"id"} and isinstance(body["id"], int) and body["id"] > 0
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT name, currency, timezone FROM organizations WHERE id = :id"),
            {"id": body["id"]},
        ).one()
    assert tuple(row) == ("Tremblay & Fils", "cad", "America/Vancouver")


@pytest.mark.parametrize("zone", ["UTC", "US/Eastern", "Etc/GMT+5"])
def test_iana_zone_names_and_links_are_accepted(runtime: Runtime, zone: str) -> None:
    """Provisioning directly: a process per zone would cost a second each for the same check."""
    assert provisioning.create_organization(runtime.uow(), "Zoned", "cad", zone) > 0


def test_json_before_the_command_is_honoured_too(seats_cli: Callable[..., Run]) -> None:
    body = ok(seats_cli("--json", "org", "create", "--name", "Flag First", process=True))
    assert set(body) == {"id"}


def test_without_json_the_output_is_for_people(seats_cli: Callable[..., Run]) -> None:
    run = seats_cli("org", "create", "--name", "Plain Text", process=True)
    assert run.code == 0, run.stderr
    assert "created" in run.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(run.stdout)


def test_user_token_works_against_the_api_and_only_its_hash_is_stored(
    seats_cli: Callable[..., Run], engine: Engine, web: Server, org: Org
) -> None:
    body = ok(
        seats_cli(
            "user",
            "create",
            "--org",
            str(org.id),
            "--email",
            "buyer@cli.example",
            "--role",
            "buyer",
            "--json",
        )
    )
    assert set(body) == {"id", "token"}
    token = body["token"]
    assert isinstance(token, str) and len(token) >= 32
    sub = ok(
        seats_cli(
            "subscription",
            "create",
            "--org",
            str(org.id),
            "--product",
            "XLGL",
            "--unit-amount",
            "50000",
            "--interval",
            "year",
            "--seats",
            "3",
            "--period-start",
            "2026-01-01",
            "--json",
        )
    )["id"]

    buyer = Client(web.url, token)
    answer = buyer.get(f"/api/subscriptions/{sub}")
    assert answer.status_code == 200, answer.text
    assert (answer.json()["paid_seats"], answer.json()["active_seats"]) == (3, 3)
    change = buyer.put(f"/api/subscriptions/{sub}/seats", json={"active_seats": 2})
    assert change.status_code == 200, change.text  # the role given on the command line holds
    assert Client(web.url, token + "x").get(f"/api/subscriptions/{sub}").status_code == 401

    with engine.connect() as connection:
        stored = connection.execute(
            text(
                "SELECT token_hash, row_to_json(users)::text AS everything FROM users "
                "WHERE id = :id"
            ),
            {"id": body["id"]},
        ).one()
        anywhere = connection.execute(
            text("SELECT count(*) FROM users WHERE row_to_json(users)::text LIKE :t"),
            {"t": f"%{token}%"},
        ).scalar_one()
    assert stored.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in stored.everything
    assert anywhere == 0


def test_each_user_gets_a_different_token(seats_cli: Callable[..., Run], org: Org) -> None:
    tokens = {
        ok(
            seats_cli(
                "user",
                "create",
                "--org",
                str(org.id),
                "--email",
                f"m{i}@cli.example",
                "--role",
                "member",
                "--json",
            )
        )["token"]
        for i in range(2)
    }
    assert len(tokens) == 2


@pytest.mark.parametrize(
    ("start", "interval", "renews"),
    [
        ("2026-01-31", "month", "2026-02-28"),
        ("2028-01-31", "month", "2028-02-29"),
        ("2026-12-15", "month", "2027-01-15"),
        ("2024-02-29", "year", "2025-02-28"),
        ("2026-03-01", "year", "2027-03-01"),
    ],
)
def test_renewal_defaults_to_one_interval_later(
    seats_cli: Callable[..., Run], org: Org, start: str, interval: str, renews: str
) -> None:
    body = ok(
        seats_cli(
            "subscription",
            "create",
            "--org",
            str(org.id),
            "--product",
            "XLGL",
            "--unit-amount",
            "1299",
            "--interval",
            interval,
            "--seats",
            "4",
            "--period-start",
            start,
            "--json",
        )
    )
    assert set(body) == {"id"}
    plan = org.owner.get(f"/api/subscriptions/{body['id']}").json()
    assert (plan["current_period_start"], plan["renews_at"]) == (start, renews)
    assert (plan["interval"], plan["unit_amount"], plan["currency"]) == (interval, 1299, "cad")
    assert (plan["paid_seats"], plan["active_seats"]) == (4, 4)


def test_an_explicit_renewal_date_is_kept(
    seats_cli: Callable[..., Run], org: Org, engine: Engine
) -> None:
    body = ok(
        seats_cli(
            "subscription",
            "create",
            "--org",
            str(org.id),
            "--product",
            "XLGL",
            "--unit-amount",
            "50000",
            "--interval",
            "month",
            "--seats",
            "2",
            "--period-start",
            "2026-01-10",
            "--renews-at",
            "2026-02-01",
            "--json",
        )
    )
    plan = org.owner.get(f"/api/subscriptions/{body['id']}").json()
    assert (plan["current_period_start"], plan["renews_at"]) == ("2026-01-10", "2026-02-01")
    with engine.connect() as connection:
        audit = connection.execute(
            text("SELECT paid_after, active_after FROM seat_changes WHERE subscription_id = :s"),
            {"s": body["id"]},
        ).all()
    assert [tuple(row) for row in audit] == [(2, 2)]  # its creation is in the seat history


# --- bad input: a non-zero exit, a clear message, and nothing written --------------------------

MISSING = str(2**63 - 1)
SUB = ["subscription", "create", "--product", "XLGL", "--interval", "month"]
BAD: dict[str, tuple[list[str], str]] = {
    "unknown org (user)": (
        ["user", "create", "--org", MISSING, "--email", "x@cli.example", "--role", "owner"],
        "organization",
    ),
    "unknown org (plan)": (
        [
            *SUB,
            "--org",
            MISSING,
            "--unit-amount",
            "100",
            "--seats",
            "1",
            "--period-start",
            "2026-01-01",
        ],
        "organization",
    ),
    "huge org id": (
        ["user", "create", "--org", str(10**30), "--email", "x@cli.example", "--role", "owner"],
        "org",
    ),
    "org id not a number": (
        ["user", "create", "--org", "acme", "--email", "x@cli.example", "--role", "owner"],
        "org",
    ),
    "bad email": (
        ["user", "create", "--org", "{org}", "--email", "not-an-email", "--role", "owner"],
        "email",
    ),
    "email with a space": (
        ["user", "create", "--org", "{org}", "--email", "a b@cli.example", "--role", "owner"],
        "email",
    ),
    "bad role": (
        ["user", "create", "--org", "{org}", "--email", "x@cli.example", "--role", "admin"],
        "role",
    ),
    "duplicate email": (
        ["user", "create", "--org", "{org}", "--email", "OWNER@CLI.EXAMPLE", "--role", "member"],
        "already",
    ),
    "zero seats": (
        [
            *SUB,
            "--org",
            "{org}",
            "--unit-amount",
            "100",
            "--seats",
            "0",
            "--period-start",
            "2026-01-01",
        ],
        "seats",
    ),
    "negative seats": (
        [
            *SUB,
            "--org",
            "{org}",
            "--unit-amount",
            "100",
            "--seats",
            "-2",
            "--period-start",
            "2026-01-01",
        ],
        "seats",
    ),
    "unit amount not a number": (
        [
            *SUB,
            "--org",
            "{org}",
            "--unit-amount",
            "abc",
            "--seats",
            "1",
            "--period-start",
            "2026-01-01",
        ],
        "unit-amount",
    ),
    "unit amount with decimals": (
        [
            *SUB,
            "--org",
            "{org}",
            "--unit-amount",
            "499.99",
            "--seats",
            "1",
            "--period-start",
            "2026-01-01",
        ],
        "unit-amount",
    ),
    "zero unit amount": (
        [
            *SUB,
            "--org",
            "{org}",
            "--unit-amount",
            "0",
            "--seats",
            "1",
            "--period-start",
            "2026-01-01",
        ],
        "unit-amount",
    ),
    "bad date": (
        [
            *SUB,
            "--org",
            "{org}",
            "--unit-amount",
            "100",
            "--seats",
            "1",
            "--period-start",
            "2026-02-30",
        ],
        "date",
    ),
    "bad renewal date": (
        [
            *SUB,
            "--org",
            "{org}",
            "--unit-amount",
            "100",
            "--seats",
            "1",
            "--period-start",
            "2026-01-01",
            "--renews-at",
            "next week",
        ],
        "date",
    ),
    "renewal before start": (
        [
            *SUB,
            "--org",
            "{org}",
            "--unit-amount",
            "100",
            "--seats",
            "1",
            "--period-start",
            "2026-01-01",
            "--renews-at",
            "2026-01-01",
        ],
        "renewal",
    ),
    "renewal past year 9999": (
        [
            *SUB,
            "--org",
            "{org}",
            "--unit-amount",
            "100",
            "--seats",
            "1",
            "--period-start",
            "9999-12-15",
        ],
        "renew",
    ),
    "bad interval": (
        [
            "subscription",
            "create",
            "--org",
            "{org}",
            "--product",
            "XLGL",
            "--interval",
            "week",
            "--unit-amount",
            "100",
            "--seats",
            "1",
            "--period-start",
            "2026-01-01",
        ],
        "interval",
    ),
    "unknown time zone": (
        ["org", "create", "--name", "Bad TZ", "--timezone", "Mars/Olympus"],
        "time zone",
    ),
    "time zone region only": (
        ["org", "create", "--name", "Bad TZ", "--timezone", "America"],
        "time zone",
    ),
    # names the system folder has but IANA does not: the machine's own zone, a tz build file, and
    # tz's placeholder for "not set"; billing days must not depend on where the server runs
    "time zone localtime": (
        ["org", "create", "--name", "Bad TZ", "--timezone", "localtime"],
        "time zone",
    ),
    "time zone posixrules": (
        ["org", "create", "--name", "Bad TZ", "--timezone", "posixrules"],
        "time zone",
    ),
    "time zone Factory": (
        ["org", "create", "--name", "Bad TZ", "--timezone", "Factory"],
        "time zone",
    ),
    "bad currency": (["org", "create", "--name", "Bad Cur", "--currency", "dollars"], "currency"),
    "currency with digits": (
        ["org", "create", "--name", "Bad Cur", "--currency", "c4d"],
        "currency",
    ),
    "blank name": (["org", "create", "--name", "   "], "name"),
}


# without --json the same refusal goes to stderr for people (a sample: each run costs a process)
PLAIN = {
    "unknown org (user)",
    "huge org id",
    "duplicate email",
    "bad date",
    "unknown time zone",
    "renewal past year 9999",
}


@pytest.fixture(scope="module")
def bad_runs(seats_cli: Callable[..., Run], org: Org, engine: Engine) -> Iterator[dict[str, Any]]:
    """Every bad command with --json, a sample without, side by side."""
    before = counts(engine)
    jobs = {
        (name, mode): [part.format(org=org.id) for part in argv] + (["--json"] if mode else [])
        for name, (argv, _) in BAD.items()
        for mode in (True, False)
        if mode or name in PLAIN
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {key: pool.submit(seats_cli, *argv) for key, argv in jobs.items()}
        runs = {key: future.result() for key, future in futures.items()}
    yield {"runs": runs, "before": before, "after": counts(engine)}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_clearly(bad_runs: dict[str, Any], case: str) -> None:
    keyword = BAD[case][1]
    as_json: Run = bad_runs["runs"][(case, True)]
    assert as_json.code != 0, as_json
    assert "Traceback" not in as_json.stdout + as_json.stderr, as_json.stderr
    body = as_json.object()
    assert set(body) == {"error", "message"}, body
    assert keyword in body["message"].lower(), body
    if case not in PLAIN:
        return
    plain: Run = bad_runs["runs"][(case, False)]
    assert plain.code == as_json.code
    assert "Traceback" not in plain.stderr, plain.stderr
    assert plain.stdout == ""
    assert keyword in plain.stderr.lower(), plain.stderr


def test_bad_input_writes_nothing(bad_runs: dict[str, Any]) -> None:
    assert bad_runs["after"] == bad_runs["before"]


# --- operator lists come in pages: a keyset cursor, never everything at once --------------------


@dataclass
class Scratch:
    """A database of its own, so the pages hold exactly what the test put there."""

    url: str
    engine: Engine
    seats: Callable[..., Run]

    def uow(self) -> UnitOfWork:
        return UnitOfWork(make_session_factory(self.engine))


@pytest.fixture
def scratch(fresh_database: Callable[[], str], tmp_path: Path) -> Iterator[Scratch]:
    url = fresh_database()
    upgrade(url)
    engine = create_engine(url)
    # Stripe unreachable, at once: an event whose handler must ask it fails every time
    dead = {"STRIPE_API_BASE": "http://127.0.0.1:9"}
    yield Scratch(url, engine, lambda *args: run_seats(url, *args, cwd=tmp_path, env=dead))
    engine.dispose()


EVENT_ROW = text(
    "INSERT INTO webhook_events (id, type, payload, source, received_at, outcome, error, attempts)"
    " VALUES (:id, :type, CAST(:payload AS jsonb), 'webhook', :received_at, :outcome, 'x', 0)"
)
FAILS_AGAIN = "payment_intent.succeeded"  # a renewal's intent: asks Stripe, which is unreachable
RECOVERS = "customer.updated"  # an unknown customer: ignored, without asking Stripe


def store_failed_events(engine: Engine, count: int) -> list[tuple[datetime, str]]:
    """`count` failed events on three instants (ties are ordered by id), and some done ones."""
    instants = [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=s) for s in (30, 10, 20)]
    rows = [
        {
            "id": f"evt_page_{index:04d}_{secrets.token_hex(2)}",
            "type": FAILS_AGAIN if index % 2 else RECOVERS,
            "payload": json.dumps(
                {
                    "data": {
                        "object": {"id": f"pi_again{index}", "metadata": {"renewal_id": "1"}}
                        if index % 2
                        else {"id": "cus_nobody_of_ours"}
                    }
                }
            ),
            "received_at": instants[index % 3],
            "outcome": "failed",
        }
        for index in range(count)
    ]
    done = [{**row, "id": row["id"] + "_done", "outcome": "processed"} for row in rows[::7]]
    with engine.begin() as connection:
        connection.execute(EVENT_ROW, rows + done)
    return sorted((row["received_at"], row["id"]) for row in rows)


def test_failed_events_come_in_pages_in_received_order(scratch: Scratch) -> None:
    expected = store_failed_events(scratch.engine, 250)
    pages: list[list[tuple[datetime, str]]] = []
    after = None
    while page := webhooks.failed_events(scratch.uow(), after, limit=100):
        pages.append(page)
        after = page[-1]
    assert [len(page) for page in pages] == [100, 100, 50]
    assert [key for page in pages for key in page] == expected


def test_replay_failed_walks_every_page_once_even_when_events_fail_again(
    scratch: Scratch,
) -> None:
    expected = store_failed_events(scratch.engine, 230)
    run = scratch.seats("webhooks", "replay", "--failed", "--json")
    assert run.code == 1, "a replay that failed says so"
    body = run.object()
    assert body["error"] == "replay_failed"
    outcomes = body["events"]
    assert sorted(outcomes) == sorted(event_id for _, event_id in expected)
    with scratch.engine.connect() as connection:
        rows = connection.execute(
            text("SELECT id, type, outcome, attempts FROM webhook_events WHERE id LIKE '%_done'")
        ).all()
        assert all(row.attempts == 0 for row in rows)  # done ones are not replayed
        rows = connection.execute(
            text(
                "SELECT id, type, outcome, attempts FROM webhook_events "
                "WHERE outcome <> 'processed'"
            )
        ).all()
    assert len(rows) == 230
    for row in rows:
        assert row.attempts == 1, row  # each handled once: the cursor moved past the failures
        if row.type == FAILS_AGAIN:
            assert row.outcome == "failed" and outcomes[row.id].startswith("failed"), row
        else:
            assert row.outcome == outcomes[row.id] == "ignored", row


ALERT_ROW = text(
    "INSERT INTO operator_alerts (kind, message, resolved_at)"
    " VALUES ('refund', :message, :resolved)"
)


def test_alerts_list_pages_by_id(scratch: Scratch) -> None:
    with scratch.engine.begin() as connection:
        connection.execute(
            ALERT_ROW,
            [
                {"message": f"alert {i}", "resolved": datetime.now(UTC) if i % 5 == 0 else None}
                for i in range(250)
            ],
        )
        everything = [row.id for row in connection.execute(text("SELECT id FROM operator_alerts"))]
        resolved = {
            row.id
            for row in connection.execute(
                text("SELECT id FROM operator_alerts WHERE resolved_at IS NOT NULL")
            )
        }
    open_ids = sorted(set(everything) - resolved)

    first = ok(scratch.seats("alerts", "list", "--json"))
    assert [a["id"] for a in first["alerts"]] == open_ids[:100]  # 100 by default
    assert first["next_after"] == open_ids[99]

    seen: list[int] = []
    after: int | None = None
    while True:
        args = ["alerts", "list", "--limit", "70", "--json"]
        page = ok(scratch.seats(*args, *(["--after", str(after)] if after else [])))
        seen += [a["id"] for a in page["alerts"]]
        assert len(page["alerts"]) <= 70
        if page["next_after"] is None:
            break
        assert page["next_after"] == seen[-1]
        after = page["next_after"]
    assert seen == open_ids

    whole = ok(scratch.seats("alerts", "list", "--all", "--limit", "1000", "--json"))
    assert [a["id"] for a in whole["alerts"]] == sorted(everything)
    assert whole["next_after"] is None
    last = ok(scratch.seats("alerts", "list", "--after", str(open_ids[-1]), "--json"))
    assert last == {"alerts": [], "next_after": None}


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "ten"])
def test_alerts_list_refuses_a_limit_out_of_range(
    seats_cli: Callable[..., Run], limit: str
) -> None:
    run = seats_cli("alerts", "list", "--limit", limit, "--json")
    assert run.code == 2, run
    assert run.object()["error"] == "usage" and "limit" in run.object()["message"]


def test_alerts_are_listed_resolved_once_and_then_listed_as_resolved(scratch: Scratch) -> None:
    with scratch.engine.begin() as connection:
        connection.execute(
            ALERT_ROW, [{"message": f"refund {i}", "resolved": None} for i in range(3)]
        )
    listed = ok(scratch.seats("alerts", "list", "--json"))
    assert [a["message"] for a in listed["alerts"]] == ["refund 0", "refund 1", "refund 2"]
    assert all(a["kind"] == "refund" and a["resolved_at"] is None for a in listed["alerts"])
    first, *rest = [a["id"] for a in listed["alerts"]]

    assert ok(scratch.seats("alerts", "resolve", str(first), "--json")) == {
        "id": first,
        "resolved": True,
    }
    assert [a["id"] for a in ok(scratch.seats("alerts", "list", "--json"))["alerts"]] == rest
    everything = ok(scratch.seats("alerts", "list", "--all", "--json"))["alerts"]
    assert [a["id"] for a in everything] == [first, *rest]
    assert everything[0]["resolved_at"] is not None
    resolved_at = everything[0]["resolved_at"]

    again = scratch.seats("alerts", "resolve", str(first), "--json")
    assert again.code == 1, again
    assert again.object()["error"] == "already_resolved"
    with pytest.raises(Conflict) as conflict:
        operations.resolve_alert(scratch.uow(), first)
    with Flask(__name__).app_context():
        answer = refused(conflict.value)
    assert (answer.status_code, answer.get_json()["error"]) == (409, "already_resolved")
    everything = ok(scratch.seats("alerts", "list", "--all", "--json"))["alerts"]
    assert everything[0]["resolved_at"] == resolved_at  # the first resolution stands

    missing = scratch.seats("alerts", "resolve", str(max(rest) + 1000), "--json")
    assert missing.code == 1 and missing.object()["error"] == "not_found", missing
