"""The database itself: migrations from nothing, constraints it enforces, no lost seat update."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from typing import Any

import psycopg
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, inspect, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from shared.bootstrap import Runtime
from shared.domain.errors import Conflict, NotFound
from shared.services import provisioning, seats
from shared.services.access import Actor
from shared.services.views import SubscriptionView
from shared.store.db import MIGRATIONS, UnitOfWork, upgrade
from shared.store.models import Base, Organization, User

CORE_TABLES = {
    "organizations",
    "users",
    "subscriptions",
    "seat_changes",
    "cart_items",
    "purchases",
    "purchase_items",
    "webhook_events",
}
VERSIONS = text("SELECT version_num FROM alembic_version")


def head_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def schema_of(engine: Engine) -> dict[str, Any]:
    """Everything a migration could change: tables, columns, keys, checks, indexes."""
    inspector = inspect(engine)
    schema: dict[str, Any] = {}
    for table in sorted(inspector.get_table_names()):
        schema[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)
            ],
            "checks": sorted(c["sqltext"] for c in inspector.get_check_constraints(table)),
            "uniques": sorted(
                str(u["column_names"]) for u in inspector.get_unique_constraints(table)
            ),
            "foreign_keys": sorted(
                str(f["referred_table"]) for f in inspector.get_foreign_keys(table)
            ),
            "indexes": sorted(i["name"] or "" for i in inspector.get_indexes(table)),
        }
    return schema


@pytest.fixture
def empty_engine(fresh_database: Callable[[], str]) -> Iterator[tuple[str, Engine]]:
    url = fresh_database()
    engine = create_engine(url)
    yield url, engine
    engine.dispose()


def test_migrations_build_the_whole_schema_from_an_empty_database(
    empty_engine: tuple[str, Engine],
) -> None:
    url, engine = empty_engine
    assert inspect(engine).get_table_names() == []

    upgrade(url)

    tables = set(inspect(engine).get_table_names())
    assert tables >= CORE_TABLES
    # every table the application maps is made by a migration, and nothing else is left around
    assert tables == set(Base.metadata.tables) | {"alembic_version"}
    with engine.connect() as connection:
        versions = connection.execute(VERSIONS).scalars().all()
    assert versions == [head_revision()]


def test_upgrading_twice_is_a_no_op_and_keeps_the_data(empty_engine: tuple[str, Engine]) -> None:
    url, engine = empty_engine
    upgrade(url)
    before = schema_of(engine)
    with engine.begin() as connection:
        org = connection.execute(
            text(
                "INSERT INTO organizations (name, currency, timezone) "
                "VALUES ('Kept', 'cad', 'America/Toronto') RETURNING id"
            )
        ).scalar_one()

    upgrade(url)

    assert schema_of(engine) == before
    with engine.connect() as connection:
        assert (
            connection.execute(
                text("SELECT name FROM organizations WHERE id = :id"), {"id": org}
            ).scalar_one()
            == "Kept"
        )
        versions = connection.execute(VERSIONS).scalars().all()
    assert versions == [head_revision()]


def test_operator_links_go_down_and_up_again_and_name_exactly_one_person(
    empty_engine: tuple[str, Engine],
) -> None:
    from alembic import command

    url, engine = empty_engine
    upgrade(url)
    head = schema_of(engine)
    link = text(
        "INSERT INTO login_links (operator_id, user_id, token_hash, expires_at) "
        "VALUES (:operator, :user, :hash, now() + interval '1 minute')"
    )
    with engine.begin() as connection:
        operator = connection.execute(
            text("INSERT INTO operators (email, token_hash) VALUES ('o@x.test', 'h') RETURNING id")
        ).scalar_one()
        org = connection.execute(
            text(
                "INSERT INTO organizations (name, currency, timezone) "
                "VALUES ('O', 'cad', 'America/Toronto') RETURNING id"
            )
        ).scalar_one()
        user = connection.execute(
            text(
                "INSERT INTO users (organization_id, email, role, token_hash) "
                "VALUES (:org, 'u@x.test', 'owner', 'u') RETURNING id"
            ),
            {"org": org},
        ).scalar_one()
        for operator_id, user_id in ((None, None), (operator, user)):
            with (
                pytest.raises(IntegrityError, match="link_for_one_person"),
                connection.begin_nested(),
            ):
                connection.execute(link, {"operator": operator_id, "user": user_id, "hash": "a"})
        connection.execute(link, {"operator": operator, "user": None, "hash": "b"})
        connection.execute(link, {"operator": None, "user": user, "hash": "c"})
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # an embedded socket path
    command.downgrade(config, "0006")
    with engine.connect() as connection:  # the customer's link is kept, the operator's gone
        kept = connection.execute(text("SELECT token_hash FROM login_links")).scalars().all()
    assert kept == ["c"]
    upgrade(url)
    assert schema_of(engine) == head


# --- constraints the database refuses on its own, whatever the application does ---------------


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    value = create_engine(database_url)
    yield value
    value.dispose()


def insert_organization(connection: Connection, name: str = "Acme") -> int:
    value: int = connection.execute(
        text(
            "INSERT INTO organizations (name, currency, timezone) "
            "VALUES (:name, 'cad', 'America/Toronto') RETURNING id"
        ),
        {"name": name},
    ).scalar_one()
    return value


def insert_user(connection: Connection, org: int, email: str, role: str = "member") -> int:
    value: int = connection.execute(
        text(
            "INSERT INTO users (organization_id, email, role, token_hash) "
            "VALUES (:org, :email, :role, md5(random()::text) || md5(random()::text)) "
            "RETURNING id"
        ),
        {"org": org, "email": email, "role": role},
    ).scalar_one()
    return value


def insert_subscription(connection: Connection, org: int, **overrides: Any) -> int:
    row: dict[str, Any] = {
        "org": org,
        "unit_amount": 50000,
        "start": date(2026, 1, 1),
        "renews": date(2027, 1, 1),
        "paid": 3,
        "active": 3,
        **overrides,
    }
    value: int = connection.execute(
        text(
            "INSERT INTO subscriptions (organization_id, product, unit_amount, currency, "
            "interval, current_period_start, renews_at, paid_seats, active_seats, anchor_day) "
            "VALUES (:org, 'XLGL', :unit_amount, 'cad', 'year', :start, :renews, :paid, :active, "
            "EXTRACT(DAY FROM CAST(:start AS date))) RETURNING id"
        ),
        row,
    ).scalar_one()
    return value


@pytest.fixture
def plan(engine: Engine) -> tuple[int, int]:
    """A committed organization and its 3-seat plan: (organization id, subscription id)."""
    with engine.begin() as connection:
        org = insert_organization(connection)
        return org, insert_subscription(connection, org)


def refused_by_database(engine: Engine, statement: str, params: dict[str, Any]) -> IntegrityError:
    with pytest.raises(IntegrityError) as caught, engine.begin() as connection:
        connection.execute(text(statement), params)
    return caught.value


def constraint_of(error: IntegrityError) -> str | None:
    diag = getattr(error.orig, "diag", None)
    return getattr(diag, "constraint_name", None)


def seats_of(engine: Engine, subscription: int) -> tuple[int, int]:
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT paid_seats, active_seats FROM subscriptions WHERE id = :id"),
            {"id": subscription},
        ).one()
    return row.paid_seats, row.active_seats


def test_zero_active_seats_is_refused(engine: Engine, plan: tuple[int, int]) -> None:
    _, sub = plan
    error = refused_by_database(
        engine, "UPDATE subscriptions SET active_seats = 0 WHERE id = :id", {"id": sub}
    )
    assert constraint_of(error) == "seat_counts"
    assert seats_of(engine, sub) == (3, 3)


def test_more_active_than_paid_seats_is_refused(engine: Engine, plan: tuple[int, int]) -> None:
    _, sub = plan
    error = refused_by_database(
        engine, "UPDATE subscriptions SET active_seats = paid_seats + 1 WHERE id = :id", {"id": sub}
    )
    assert constraint_of(error) == "seat_counts"
    with pytest.raises(IntegrityError), engine.begin() as connection:
        insert_subscription(connection, plan[0], paid=2, active=5)
    assert seats_of(engine, sub) == (3, 3)


def test_same_email_with_another_case_in_one_organization_is_refused(
    engine: Engine, plan: tuple[int, int]
) -> None:
    org, _ = plan
    with engine.begin() as connection:
        insert_user(connection, org, "Ada.Lovelace@Example.com")
    with pytest.raises(IntegrityError) as caught, engine.begin() as connection:
        insert_user(connection, org, "ada.lovelace@EXAMPLE.COM")
    assert constraint_of(caught.value) == "users_email_per_org"
    with engine.connect() as connection:
        count = connection.execute(
            text("SELECT count(*) FROM users WHERE organization_id = :org"), {"org": org}
        ).scalar_one()
    assert count == 1


def test_same_email_in_two_organizations_is_allowed(engine: Engine) -> None:
    with engine.begin() as connection:
        first = insert_organization(connection, "One")
        second = insert_organization(connection, "Two")
        a = insert_user(connection, first, "shared@example.com", "owner")
        b = insert_user(connection, second, "Shared@Example.com", "owner")
    assert a != b
    with engine.connect() as connection:
        orgs = (
            connection.execute(
                text(
                    "SELECT organization_id FROM users WHERE lower(email) = 'shared@example.com' "
                    "AND organization_id IN (:a, :b) ORDER BY organization_id"
                ),
                {"a": first, "b": second},
            )
            .scalars()
            .all()
        )
    assert orgs == [first, second]


def test_subscription_of_an_unknown_organization_is_refused(engine: Engine) -> None:
    with engine.connect() as connection:
        missing = connection.execute(
            text("SELECT coalesce(max(id), 0) + 1000 FROM organizations")
        ).scalar_one()
    with pytest.raises(IntegrityError) as caught, engine.begin() as connection:
        insert_subscription(connection, missing)
    assert constraint_of(caught.value) == "subscriptions_organization_id_fkey"
    with engine.connect() as connection:
        assert (
            connection.execute(
                text("SELECT count(*) FROM subscriptions WHERE organization_id = :o"),
                {"o": missing},
            ).scalar_one()
            == 0
        )


@pytest.mark.parametrize("amount", [0, -1])
def test_non_positive_unit_amount_is_refused(
    engine: Engine, plan: tuple[int, int], amount: int
) -> None:
    org, sub = plan
    with pytest.raises(IntegrityError) as caught, engine.begin() as connection:
        insert_subscription(connection, org, unit_amount=amount)
    assert constraint_of(caught.value) == "unit_amount_positive"
    error = refused_by_database(
        engine, "UPDATE subscriptions SET unit_amount = :a WHERE id = :id", {"a": amount, "id": sub}
    )
    assert constraint_of(error) == "unit_amount_positive"


@pytest.mark.parametrize("days", [0, -1])
def test_renewal_on_or_before_the_period_start_is_refused(
    engine: Engine, plan: tuple[int, int], days: int
) -> None:
    org, sub = plan
    start = date(2026, 3, 1)
    with pytest.raises(IntegrityError) as caught, engine.begin() as connection:
        insert_subscription(connection, org, start=start, renews=start + timedelta(days=days))
    assert constraint_of(caught.value) == "period_order"
    error = refused_by_database(
        engine,
        "UPDATE subscriptions SET renews_at = current_period_start + :d WHERE id = :id",
        {"d": days, "id": sub},
    )
    assert constraint_of(error) == "period_order"


@pytest.mark.parametrize("role", ["admin", "Owner", ""])
def test_unknown_role_is_refused(engine: Engine, plan: tuple[int, int], role: str) -> None:
    org, _ = plan
    with pytest.raises(IntegrityError) as caught, engine.begin() as connection:
        insert_user(connection, org, "someone@example.com", role)
    assert constraint_of(caught.value) == "role_known"
    with engine.begin() as connection:
        user = insert_user(connection, org, "someone@example.com", "buyer")
    error = refused_by_database(
        engine, "UPDATE users SET role = :r WHERE id = :id", {"r": role, "id": user}
    )
    assert constraint_of(error) == "role_known"


# --- concurrent free changes: serialized, each recorded, none lost -----------------------------


def test_concurrent_free_changes_are_all_recorded_in_order(runtime: Runtime) -> None:
    org = provisioning.create_organization(runtime.uow(), "Race", "cad", "America/Toronto")
    owner, _ = provisioning.create_user(runtime.uow(), org, "owner@race.example", "owner")
    buyer, _ = provisioning.create_user(runtime.uow(), org, "buyer@race.example", "buyer")
    sub = provisioning.create_subscription(
        runtime.uow(), org, "XLGL", 50000, "year", 3, date.today() - timedelta(days=10)
    )
    actors = [Actor(owner, org, "owner"), Actor(buyer, org, "buyer")]
    rounds = 20
    active = 3
    for round_number in range(rounds):
        # both targets differ from the current count and from each other, so both must be recorded
        targets = [n for n in (1, 2, 3) if n != active]
        if round_number % 2:
            targets.reverse()
        barrier = threading.Barrier(2)
        results: list[SubscriptionView | BaseException] = [RuntimeError("not run")] * 2

        def change(
            index: int,
            targets: list[int] = targets,
            barrier: threading.Barrier = barrier,
            results: list[SubscriptionView | BaseException] = results,
        ) -> None:
            barrier.wait(timeout=10)
            try:
                results[index] = seats.change_seats(
                    runtime.uow(), actors[index], sub, targets[index]
                )
            except BaseException as error:  # reported below, in the test's own thread
                results[index] = error

        threads = [threading.Thread(target=change, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads)
        for index, result in enumerate(results):
            assert isinstance(result, SubscriptionView), f"round {round_number}: {result!r}"
            assert result.active_seats == targets[index] and result.paid_seats == 3

        with runtime.engine.connect() as connection:
            active = connection.execute(
                text("SELECT active_seats FROM subscriptions WHERE id = :id"), {"id": sub}
            ).scalar_one()
        assert active in targets

    with runtime.engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT id, actor_user_id, paid_before, paid_after, active_before, active_after "
                "FROM seat_changes WHERE subscription_id = :id ORDER BY id"
            ),
            {"id": sub},
        ).all()
        final = connection.execute(
            text("SELECT paid_seats, active_seats FROM subscriptions WHERE id = :id"), {"id": sub}
        ).one()

    assert len(rows) == 1 + 2 * rounds  # creation, then both changes of every round
    assert (rows[0].active_before, rows[0].active_after) == (3, 3)
    for previous, row in itertools.pairwise(rows):
        assert row.active_before == previous.active_after, rows
        assert row.paid_before == previous.paid_after == row.paid_after == 3
        assert row.active_before != row.active_after
    changes = rows[1:]
    assert sum(row.actor_user_id == owner for row in changes) == rounds
    assert sum(row.actor_user_id == buyer for row in changes) == rounds
    assert tuple(final) == (3, rows[-1].active_after)


# --- the driver cursor of the webhook hot path ------------------------------------------------


def test_the_driver_cursor_hands_its_connection_back_in_transactions_even_after_an_error(
    fake_runtime: Runtime,
) -> None:
    """It runs in autocommit; a connection left that way would make every later unit of
    work of the pool commit statement by statement."""
    from sqlalchemy.exc import ProgrammingError

    engine = fake_runtime.engine
    engine.dispose()  # one connection in the pool, so the next checkout is the same one
    with fake_runtime.uow().driver_cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    with pytest.raises(ProgrammingError), fake_runtime.uow().driver_cursor() as cursor:
        cursor.execute("SELECT * FROM no_such_table")  # a driver error, as SQLAlchemy's
    with fake_runtime.uow().driver_cursor() as cursor:  # still usable
        cursor.execute("SELECT 2")
        assert cursor.fetchone() == (2,)
    with engine.connect() as connection:
        assert connection.connection.dbapi_connection.autocommit is False  # type: ignore[union-attr]
        connection.execute(text("CREATE TEMP TABLE kept_or_not (x int)"))
        connection.rollback()  # in a transaction, so this undoes it
        assert connection.execute(text("SELECT to_regclass('kept_or_not')")).scalar() is None


def test_after_a_database_restart_one_webhook_fails_not_one_per_pooled_connection(
    fresh_database: Any, settings: Any
) -> None:
    """The driver cursor retires every connection of a dead generation at once, as
    SQLAlchemy's own handling does (found by review: it retired only the one that failed)."""
    from dataclasses import replace

    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.pool import NullPool

    from shared.bootstrap import build
    from shared.services import webhooks

    url: str = fresh_database(migrated=True)
    upgrade(url)
    rt = build(replace(settings, database_url=url), pool_size=3)
    try:
        held = [rt.engine.raw_connection() for _ in range(3)]
        pids = [c.driver_connection.info.backend_pid for c in held]  # type: ignore[union-attr]
        for connection in held:
            connection.close()
        admin = create_engine(url, poolclass=NullPool)  # outside the pool
        with admin.connect() as connection:  # a restart, as far as those three can tell
            for pid in pids:
                connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        admin.dispose()
        failures = 0
        for number in range(3):
            event = {
                "id": f"evt_restart{number}",
                "type": "customer.updated",
                "data": {"object": {"id": f"cus_{number}"}},
            }
            try:
                webhooks.store_event(rt.uow(), event)
            except DBAPIError as error:
                assert error.connection_invalidated
                failures += 1
        assert failures <= 1
    finally:
        rt.engine.dispose()


# --- how a unit of work ends ------------------------------------------------------------------

PREPARED = text("SELECT count(*) FROM pg_prepared_statements")


def organization_names(runtime: Runtime, *ids: int) -> list[str]:
    with runtime.engine.connect() as connection:
        return list(
            connection.scalars(
                text("SELECT name FROM organizations WHERE id = ANY(:ids) OR name = 'Lost'"),
                {"ids": list(ids)},
            )
        )


def test_units_that_only_read_keep_the_statements_their_connection_prepared(
    fake_runtime: Runtime,
) -> None:
    """psycopg prepares a statement at its fifth run on a connection and forgets them all at a
    ROLLBACK: read-only units ending that way (bearer lookups, status polls, pages) kept every
    busy connection from ever holding a prepared statement."""
    fake_runtime.engine.dispose()  # one pooled connection: each unit below gets the same one
    org = provisioning.create_organization(fake_runtime.uow(), "Acme", "cad", "America/Toronto")
    for _ in range(6):
        with fake_runtime.uow() as uow:
            assert seats_or_none(uow, org) == "Acme"
        with pytest.raises(NotFound), fake_runtime.uow() as uow:
            seats_or_none(uow, org)
            raise NotFound("a refusal after the read", "not_found")
    with fake_runtime.uow() as uow:
        assert uow.session.scalar(PREPARED) >= 1


def seats_or_none(uow: Any, org: int) -> str | None:
    found: str | None = uow.session.scalar(select(Organization.name).where(Organization.id == org))
    return found


@pytest.mark.parametrize("how", ["orm flushed", "orm pending", "core", "refused after"])
def test_a_unit_left_without_commit_keeps_nothing_it_wrote(fake_runtime: Runtime, how: str) -> None:
    """Ending a read-only unit with COMMIT must never commit a write: flushed by a query,
    still pending in the session, sent as a statement, or followed by a refusal."""
    kept = provisioning.create_organization(fake_runtime.uow(), "Kept", "cad", "America/Toronto")
    with contextlib.suppress(Conflict), fake_runtime.uow() as uow:
        if how == "core":
            changed = text("UPDATE organizations SET name = 'Changed' WHERE id = :id")
            uow.session.execute(changed, {"id": kept})
        else:
            uow.session.scalar(select(Organization.id).limit(1))  # a read first
            uow.session.add(Organization(name="Lost", currency="cad", timezone="UTC"))
            if how != "orm pending":
                uow.session.scalar(select(Organization.id).limit(1))  # autoflush: INSERT sent
        if how == "refused after":
            raise Conflict("refused after writing", "conflict")
    assert organization_names(fake_runtime, kept) == ["Kept"]


def test_a_unit_whose_read_failed_is_rolled_back_and_its_connection_serves_again(
    fake_runtime: Runtime,
) -> None:
    """A refusal raised after a statement the database refused (the transaction aborted):
    nothing is kept (a COMMIT of an aborted transaction is a rollback to PostgreSQL) and the
    connection serves the next unit."""
    fake_runtime.engine.dispose()
    with pytest.raises(Conflict), fake_runtime.uow() as uow:
        with contextlib.suppress(DBAPIError):
            uow.session.scalar(text("SELECT 1 / 0"))
        raise Conflict("told the user", "conflict")
    with fake_runtime.uow() as uow:
        assert uow.session.scalar(text("SELECT 2")) == 2


def test_a_refusal_after_a_refused_write_reaches_the_caller_and_frees_its_connection(
    fake_runtime: Runtime,
) -> None:
    """Two people created at once with one email: the loser's flush fails and becomes a
    refusal (`provisioning.create_user`). A failed flush leaves the session needing a
    rollback; the refusal, not a session error, is what the caller sees (found by review)."""
    org = provisioning.create_organization(fake_runtime.uow(), "Acme", "cad", "America/Toronto")
    provisioning.create_user(fake_runtime.uow(), org, "twice@acme.example.com", "buyer")
    with pytest.raises(Conflict), fake_runtime.uow() as uow:
        uow.session.scalar(select(Organization.name).where(Organization.id == org))
        uow.session.add(
            User(
                organization_id=org,
                email="twice@acme.example.com",
                role="buyer",
                token_hash="0" * 64,
            )
        )
        try:
            uow.session.flush()
        except IntegrityError as error:
            raise Conflict("already a user", "email_taken") from error
    assert fake_runtime.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_a_unit_that_locked_rows_and_wrote_nothing_still_ends_with_a_rollback(
    fake_runtime: Runtime,
) -> None:
    """A row lock gives the transaction an id: its COMMIT would wait for a WAL flush that a
    ROLLBACK does not (found by review). So such a unit rolls back, and its connection's
    prepared statements go with it (psycopg's rule), unlike a unit that only read."""
    fake_runtime.engine.dispose()
    org = provisioning.create_organization(fake_runtime.uow(), "Acme", "cad", "America/Toronto")
    locked = select(Organization.name).where(Organization.id == org).with_for_update(read=True)
    for _ in range(6):
        with fake_runtime.uow() as uow:
            seats_or_none(uow, org)
    with fake_runtime.uow() as uow:
        assert uow.session.scalar(locked) == "Acme"
    with fake_runtime.uow() as uow:
        assert uow.session.scalar(PREPARED) == 0


def test_a_unit_given_a_connection_rolls_back_what_that_connection_left_open(
    fake_runtime: Runtime,
) -> None:
    """A unit on a worker's own connection (`UnitOfWork.on_connection`) may join a transaction
    other statements began there: it keeps rolling back, even when it only read itself
    (found by review: its COMMIT would not have ended that transaction, only its own)."""
    org = provisioning.create_organization(fake_runtime.uow(), "Kept", "cad", "America/Toronto")
    with fake_runtime.engine.connect() as connection:
        connection.execute(
            text("UPDATE organizations SET name = 'Changed' WHERE id = :id"), {"id": org}
        )
        with UnitOfWork.on_connection(connection) as uow:
            assert seats_or_none(uow, org) == "Changed"
        connection.commit()
    assert organization_names(fake_runtime, org) == ["Kept"]


DESCRIBED = text(
    "SELECT 1, 'a'::text AS label, 2.50::numeric(10, 2) AS price, now() AS at, "
    "'{\"k\": [1]}'::jsonb AS doc, NULL::boolean AS flag, ARRAY[1, 2] AS ids"
)


def test_a_result_is_described_as_psycopg_describes_it_even_after_the_cursor_moved_on(
    fake_runtime: Runtime, database_url: str
) -> None:
    """Our cursors make the description when it is read, from the result it belongs to:
    names, types and sizes as psycopg's own cursor gives them."""
    with psycopg.connect(database_url.replace("postgresql+psycopg", "postgresql")) as plain:
        expected = plain.execute(DESCRIBED.text).description
        assert expected is not None
    with fake_runtime.engine.connect() as connection:
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(DESCRIBED.text)
        described = cursor.description
        cursor.execute("UPDATE organizations SET name = name WHERE false")
        assert cursor.description is None  # no rows: no description, as psycopg says
        assert described is not None and len(described) == len(expected) == 7
        assert [tuple(column) for column in described] == [tuple(c) for c in expected]
        assert [c.type_display for c in described] == [c.type_display for c in expected]
        assert [tuple(c) for c in described[1:3]] == [tuple(c) for c in expected[1:3]]
        cursor.execute("SELECT")  # psycopg's own rule: rows of no columns are described
        assert cursor.description is not None and list(cursor.description) == []
        cursor.execute("-- an empty query")  # no rows at all (found by review on psycopg 3.1)
        assert cursor.description is None
        cursor.close()


def test_a_statement_run_before_makes_no_column_descriptions(
    fake_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy reads a statement's result layout from its first run: describing each
    column again at every run (psycopg's `Column` objects) was a tenth of a web request."""
    org = provisioning.create_organization(fake_runtime.uow(), "Acme", "cad", "America/Toronto")
    made: list[int] = []
    original = psycopg.Column.__init__

    def counted(column: Any, *args: Any) -> None:
        made.append(1)
        original(column, *args)

    def read() -> None:
        with fake_runtime.uow() as uow:
            found = uow.session.scalar(select(Organization).where(Organization.id == org))
            assert found is not None and found.name == "Acme"

    read()  # compiled, and its result described, once
    monkeypatch.setattr(psycopg.Column, "__init__", counted)
    for _ in range(3):
        read()
    assert made == []


def test_a_description_that_cannot_be_made_fails_the_same_way_at_every_read(
    fake_runtime: Runtime,
) -> None:
    """A column name the client encoding cannot decode: psycopg's own error, each time it is
    read (found by review: the second read raised an unrelated AttributeError)."""
    with fake_runtime.engine.connect() as connection:
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute('CREATE TEMPORARY VIEW named AS SELECT 1 AS "é"')
        cursor.execute("SET client_encoding TO 'SQL_ASCII'")
        cursor.execute("SELECT * FROM named")
        described = cursor.description
        assert described is not None and len(described) == 1
        for _ in range(2):
            with pytest.raises(UnicodeDecodeError):
                described[0]
        cursor.close()
        connection.invalidate()  # not back to the pool with another client encoding
