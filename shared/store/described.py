"""A psycopg cursor whose `description` is made only when something reads it.

SQLAlchemy asks for `cursor.description` after every statement, and psycopg makes it anew
each time: one `Column` per result column, each decoding the column's name and looking up
its type. For a statement SQLAlchemy has run before (every statement of ours, compiled
once), it only checks that a description exists and uses the layout it cached the first
time, so those objects were made for nobody: about a tenth of the instructions of a cart
add or a checkout through the web (README, "Benchmarks").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

import psycopg
from psycopg import Column
from psycopg.adapt import AdaptersMap
from psycopg.pq import ExecStatus
from psycopg.pq.abc import PGresult

_ROWS = {
    status
    for status in (
        ExecStatus.TUPLES_OK,
        ExecStatus.SINGLE_TUPLE,
        getattr(ExecStatus, "TUPLES_CHUNK", None),
    )
    if status is not None  # psycopg 3.1 has no TUPLES_CHUNK (and EMPTY_QUERY is 0)
}
"""Results that describe columns even with none (psycopg's own rule: `SELECT ;`)."""


class _Result:
    """What `Column` reads from its cursor, kept as it was for this result: by the time the
    description is read the cursor may hold another result."""

    __slots__ = ("_encoding", "adapters", "pgresult")

    def __init__(self, pgresult: PGresult, encoding: str, adapters: AdaptersMap) -> None:
        self.pgresult = pgresult
        self._encoding = encoding
        self.adapters = adapters


class Description(Sequence[Column]):
    """psycopg's description of one result, its columns made on first use."""

    __slots__ = ("_columns", "_result", "_size")

    def __init__(self, result: _Result, size: int) -> None:
        self._result: _Result | None = result  # let go once the columns are made
        self._size = size
        self._columns: list[Column] | None = None

    def _made(self) -> list[Column]:
        # Made, then kept, then the result let go, in that order and read in the other: two
        # readers both get columns, and a failure (a name the client encoding cannot decode)
        # is raised again at the next read.
        result = self._result
        columns = self._columns
        if columns is None:
            columns = [Column(result, i) for i in range(self._size)]  # type: ignore[arg-type]
            self._columns = columns
            self._result = None
        return columns

    def __len__(self) -> int:
        return self._size

    @overload
    def __getitem__(self, index: int) -> Column: ...
    @overload
    def __getitem__(self, index: slice) -> list[Column]: ...
    def __getitem__(self, index: int | slice) -> Column | list[Column]:
        return self._made()[index]

    def __iter__(self) -> Iterator[Column]:
        return iter(self._made())

    def __repr__(self) -> str:
        return repr(self._made())


class DescribedOnDemand(psycopg.Cursor[Any]):
    """`make_engine`'s cursors (psycopg's `cursor_factory`)."""

    @property
    def description(self) -> Description | None:  # type: ignore[override]
        result = self.pgresult
        if result and (result.nfields or result.status in _ROWS):
            return Description(_Result(result, self._encoding, self.adapters), result.nfields)
        return None
