"""Engine, sessions and the unit of work: built by a factory, never at import time."""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Select,
    bindparam,
    create_engine,
    event,
    func,
    select,
    text,
    true,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from shared.domain.errors import Refused
from shared.store.described import DescribedOnDemand

MIGRATIONS = Path(__file__).parent / "migrations"

READ_ONLY = "seats_read_only"
"""A connection's mark, set when a unit of work's transaction begins on it and taken off by
any statement but a plain SELECT: a transaction that only read can end with COMMIT. (A
SELECT is trusted not to write: no SELECT INTO, NOTIFY or writing function here.)"""
_UNIT_CONNECTION = "seats_connection"
"""Where a session keeps the connection its transaction began on (`_began`)."""
_SELECT = re.compile(r"\s*select\b", re.IGNORECASE).match
_LOCKING = re.compile(r"\bfor\s+(?:no\s+key\s+update|update|key\s+share|share)\b", re.I).search
"""A row lock gives the transaction an id, and its COMMIT then waits for a WAL flush that a
ROLLBACK does not."""
_WATCHED: weakref.WeakSet[Engine] = weakref.WeakSet()
"""Engines whose statements are looked at (`make_engine`): on another, every unit rolls back."""


def make_engine(url: str, pool_size: int = 5) -> Engine:
    """No pre-ping: it costs a round trip on every request. A connection broken by a
    database restart is discarded on its first error (the pool is invalidated) and
    old ones are recycled. Cursors describe a result only when asked (`described`)."""
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=10,
        pool_recycle=1800,
        connect_args={"cursor_factory": DescribedOnDemand},
    )
    event.listen(engine, "before_cursor_execute", _note_statement)
    _WATCHED.add(engine)
    return engine


def _note_statement(connection: Connection, cursor: Any, statement: str, *_: Any) -> None:
    if connection.info.get(READ_ONLY) and (not _SELECT(statement) or _LOCKING(statement)):
        connection.info[READ_ONLY] = False


def _began(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    connection.info[READ_ONLY] = connection.engine in _WATCHED
    session.info[_UNIT_CONNECTION] = connection


PURCHASE_LOCKS = 7301
RENEWAL_LOCKS = 7302
"""Advisory lock namespaces: (namespace, id) pairs never collide across kinds of work."""
CARD_SYNC_LOCKS = 7303
"""The two-key form (namespace, hashtext(Stripe customer id)): a key space of its own."""


def lock_key(namespace: int, key: int) -> int:
    """One bigint per (namespace, id): ids past 2**31 fit too, kinds never collide."""
    if not 0 <= key < 2**48:
        raise ValueError("advisory lock keys are ids below 2**48")
    return (namespace << 48) | key


@contextmanager
def work_lock(engine: Engine, namespace: int, key: int) -> Iterator[bool]:
    """Try to become the one worker on (namespace, key); yield whether we did.

    A PostgreSQL advisory lock on a connection of its own: a crashed holder's lock
    dies with its connection, so nothing is ever stuck behind a dead worker.
    """
    params = {"lock": lock_key(namespace, key)}
    with engine.connect() as connection:
        got = bool(connection.scalar(text("SELECT pg_try_advisory_lock(:lock)"), params))
        try:
            yield got
        finally:
            if got:
                connection.execute(text("SELECT pg_advisory_unlock(:lock)"), params)
            connection.commit()


@contextmanager
def named_lock(
    engine: Engine, namespace: int, name: str, first: Select[Any], params: dict[str, Any]
) -> Iterator[tuple[Connection, tuple[Any, ...] | None]]:
    """Become the one worker on (namespace, name) for a row `first` reads, and yield that row
    as read once the lock is held (None, and no lock taken, when there is no such row).

    The lock is tried in the same statement as the read: with nobody else on that name, the
    usual case, lock and read are one round trip; otherwise it waits for the lock and reads
    again. `first` must lock its row FOR SHARE, so that a write committed after the
    statement's snapshot (by the holder before us, say) is the version read. It runs on a
    connection of its own in autocommit (nothing held open while the holder waits on
    Stripe), yielded for the holder's own single statements; the lock is released with
    every session lock of that connection (a row read twice under concurrent change may
    have tried it twice), a crashed holder's lock dies with its connection, and one that
    cannot unlock is thrown away."""
    key = {"lock_name": name}
    lock = (namespace, func.hashtext(bindparam("lock_name")))
    with engine.connect() as connection:
        alone = connection.execution_options(isolation_level="AUTOCOMMIT")
        held = True  # until known otherwise: a read that failed may have taken the lock
        try:
            row: Row[Any] | None = alone.execute(
                first.add_columns(func.pg_try_advisory_lock(*lock)), {**params, **key}
            ).one_or_none()
            if row is None:  # (a row found, then changed so that it no longer matched,
                # would leave a lock held: `first` must read by a key its rows never lose)
                held = False
            elif not row[-1]:  # someone else holds it: wait, then read what they left
                alone.execute(select(func.pg_advisory_lock(*lock)), key)
                row = alone.execute(first.add_columns(true()), params).one_or_none()
            yield alone, None if row is None else tuple(row)[:-1]
        finally:
            if held:
                try:
                    alone.execute(select(func.pg_advisory_unlock_all()))
                except Exception:
                    connection.invalidate()
                    raise


class AdvisoryLock:
    """A worker's advisory lock, held on its own working connection: tried inside its first
    transaction (`take`, or as a column of its first read: `took`), released in autocommit
    at the end; a connection that cannot unlock is thrown away, so the lock never goes back
    to the pool with it. A crashed holder's lock dies with its connection."""

    def __init__(self, connection: Connection, namespace: int, key: int) -> None:
        self.connection = connection
        self.key = lock_key(namespace, key)
        self.held = False

    def take(self, session: Session) -> bool:
        self.trying()
        return self.took(session.scalar(select(func.pg_try_advisory_lock(self.key))))

    def trying(self) -> None:
        """Called before the statement that tries the lock: if it fails, the lock may be
        held all the same, and `release` lets it go."""
        self.held = True

    def took(self, got: bool | None) -> bool:
        """What a `pg_try_advisory_lock(key)` the caller sent in its own read answered."""
        self.held = bool(got)
        return self.held

    def release(self) -> None:
        """Every session lock of the connection goes: it is this worker's own, and a read
        that tried the lock may have tried it twice (a row re-read under concurrent change)."""
        if not self.held:
            return
        try:
            unlocking = self.connection.execution_options(isolation_level="AUTOCOMMIT")
            unlocking.execute(select(func.pg_advisory_unlock_all()))
        except Exception:
            self.connection.invalidate()
            raise
        finally:
            self.held = False


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    factory = sessionmaker(engine, expire_on_commit=False)
    event.listen(factory, "after_begin", _began)
    return factory


_CONNECTION_SESSIONS = sessionmaker(expire_on_commit=False)
"""Sessions bound at creation to a given connection (`UnitOfWork.on_connection`)."""


def upgrade(url: str, revision: str = "head") -> None:
    """Create or update the schema; migrations are the only way it is made."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(config, revision)


class UnitOfWork:
    """One transaction: nothing is kept unless `commit` is called.

    Row locks are taken FOR NO KEY UPDATE (`key_share=True`) everywhere: we
    never change keys, and inserts that merely reference a locked row (foreign
    keys take KEY SHARE) then go on. Plain FOR UPDATE made checkout (locking
    the buyer, inserting lines that reference the plan) and the charger
    (locking the plan, inserting audit rows that reference the buyer) deadlock.
    """

    def __init__(
        self, session_factory: sessionmaker[Session], bind: Connection | None = None
    ) -> None:
        self._session_factory = session_factory
        self._bind = bind

    @classmethod
    def on_connection(cls, connection: Connection) -> UnitOfWork:
        """Every session on this one connection (a worker's own, holding its advisory
        lock). The sessionmaker is the module's one: each sessionmaker makes a Session
        class of its own, whose event dispatch SQLAlchemy builds again on first use (a
        sessionmaker per charge was 1.5% of the worker's CPU)."""
        return cls(_CONNECTION_SESSIONS, connection)

    def __enter__(self) -> UnitOfWork:
        if self._bind is None:
            self.session = self._session_factory()
        else:
            self.session = self._session_factory(bind=self._bind)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._only_read(exc):
                self.session.commit()
            else:
                self.session.rollback()
        finally:
            self.session.close()

    def _only_read(self, exc: BaseException | None) -> bool:
        """A transaction that only read, left normally or by a refusal, ends with COMMIT:
        the same for PostgreSQL as a ROLLBACK (an aborted one is rolled back all the same), but
        psycopg forgets every statement the connection had prepared at a ROLLBACK (and
        sends DEALLOCATE ALL), so each read-only unit (a bearer lookup, a status poll, a
        page) would otherwise cost the busy paths their prepared statements.

        Only a unit on a pooled connection of its own: one given a connection (a worker's,
        holding its lock) may share that connection's transaction with other statements."""
        session = self.session
        if self._bind is not None or (exc is not None and not isinstance(exc, Refused)):
            return False
        if not session.is_active or not session.in_transaction():
            return False  # (a failed flush: only a rollback is allowed)
        if session.new or session.dirty or session.deleted:
            return False
        connection: Connection | None = session.info.get(_UNIT_CONNECTION)  # none taken now
        return (
            connection is not None
            and not connection.invalidated
            and connection.info.get(READ_ONLY) is True
        )

    def commit(self) -> None:
        self.session.commit()

    def driver_cursor(self) -> AbstractContextManager[Any]:
        """A pooled connection's own psycopg cursor, in autocommit: for the statement on the
        hottest path (every webhook), without the Session's and Core's per-call work (two
        thirds of that statement's cost). Driver errors come out as SQLAlchemy's, so the
        same handlers (503 on an outage) apply."""
        return _driver_cursor(self._engine())

    def named_lock(
        self, namespace: int, name: str, first: Select[Any], params: dict[str, Any]
    ) -> AbstractContextManager[tuple[Connection, tuple[Any, ...] | None]]:
        """`named_lock` on this unit's database."""
        return named_lock(self._engine(), namespace, name, first, params)

    def single(self) -> UnitOfWork:
        """For a block whose statements each stand alone (reads, one conditional UPDATE):
        each runs in its own implicit transaction, sparing the BEGIN and COMMIT round trips
        an explicit one costs (psycopg sends them on their own)."""
        return _Autocommit(self._session_factory, self._bind)

    def _engine(self) -> Engine:
        bind = self._bind if self._bind is not None else self._session_factory.kw["bind"]
        return bind.engine  # type: ignore[no-any-return]


@contextmanager
def _driver_cursor(engine: Engine) -> Iterator[Any]:
    try:
        fairy = engine.raw_connection()
    except psycopg.Error as error:  # the pool hands out the driver's own connect errors
        raise DBAPIError.instance(None, None, error, psycopg.Error, True, True) from error
    driver: psycopg.Connection[Any] = fairy.driver_connection  # type: ignore[assignment]
    try:
        driver.autocommit = True
        with driver.cursor() as cursor:
            yield cursor
    except psycopg.Error as error:
        gone = engine.dialect.is_disconnect(error, fairy.dbapi_connection, None)  # type: ignore[arg-type]
        if gone:  # like SQLAlchemy's own handling: every connection of that generation goes
            engine.pool._invalidate(fairy, error)
        raise DBAPIError.instance(
            None, None, error, psycopg.Error, True, gone, engine.dialect
        ) from error
    finally:
        try:
            if not driver.closed:  # the pool's other users expect transactions
                driver.autocommit = False
        except psycopg.Error:
            fairy.invalidate()
        fairy.close()


class _Autocommit(UnitOfWork):
    """A unit of work in autocommit; its connection goes back to transactions after it
    (the pool's, on check-in; a worker's own connection, here)."""

    def __enter__(self) -> UnitOfWork:
        super().__enter__()
        self.connection = self.session.connection(
            execution_options={"isolation_level": "AUTOCOMMIT"}
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, tb)
        if not self.connection.closed:
            self.connection.execution_options(
                isolation_level=self.connection.default_isolation_level
            )
