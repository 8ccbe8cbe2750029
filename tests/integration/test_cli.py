"""The `seats` console script, run as an operator runs it: a real process on a real database."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, inspect, text

from shared import provisioning
from shared.bootstrap import Runtime
from tests.conftest import Client, Server

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


def run_seats(database_url: str, *args: str, cwd: Path | None = None) -> Run:
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

    def call(*args: str) -> Run:
        return run_seats(database_url, *args, cwd=where)

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
    first = run_seats(url, "db", "upgrade", "--json")
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
    body = ok(seats_cli("--json", "org", "create", "--name", "Flag First"))
    assert set(body) == {"id"}


def test_without_json_the_output_is_for_people(seats_cli: Callable[..., Run]) -> None:
    run = seats_cli("org", "create", "--name", "Plain Text")
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
