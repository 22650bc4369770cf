"""Run untrusted (model-written) SQL against a run's table database, safely.

:class:`SqlSandbox` answers one SELECT at a time and never raises for bad SQL: every failure is a
:class:`Result` with a ``reason`` from :data:`REASONS`:

``not_select``           empty, or the statement does not start with SELECT, WITH or VALUES
``multiple_statements``  more than one statement (``;`` outside string literals, quoted
                         identifiers and comments separates statements; a trailing ``;`` is fine)
``denied``               the authorizer refused an action; ``denied`` says which, e.g.
                         ``INSERT(t_x)``, ``READ(sqlite_master.name)`` (table.column, as
                         for UPDATE), ``FUNCTION(load_extension)``, ``PRAGMA(query_only, 0)``
``timeout``              still running after ``timeout_s`` (wall clock, checked every
                         :data:`PROGRESS_OPS` virtual-machine instructions, fetching included)
``too_many_rows``        more than ``max_rows`` rows (``rows`` is then empty)
``sql_error``            SQLite rejected or failed the query (syntax, unknown column, value too
                         long, ...); ``error`` has SQLite's message
``empty_result``         no rows, or only NULL cells

Layers, each enough to stop writes on its own:

0. the statement check (:func:`check_statement`): one statement, starting SELECT/WITH/VALUES;
1. the file is opened read-only (``file:…?mode=ro``) and ``PRAGMA query_only=ON``;
2. an authorizer allows only SELECT, recursive CTEs, reads of the allowed tables (``tables``,
   default: the tables in the database's table index, else every user table and view) in the
   main database, and functions other than :data:`DENIED_FUNCTIONS`; it denies everything
   else (ATTACH/DETACH, PRAGMA, INSERT/UPDATE/DELETE, CREATE/DROP/ALTER, transactions,
   ``sqlite_master``, table-valued functions such as ``pragma_table_info`` or ``json_each``);
3. where Python allows (3.11+), connection limits: no attached databases, values up to
   ``max_value_bytes``, SQL text up to :data:`MAX_SQL_CHARS`; extension loading is off.

SQLite reads its own schema without consulting the authorizer, so ``sqlite_master`` needs no
allowance (the tests check queries work with it denied). ``SELECT count(*) FROM c`` reads no
column, which SQLite reports as a read of ``c`` with column ""; that is allowed for names that
are no real table (a CTE such as the recursive ``c`` of the tests), denied for real ones.
``denied`` names the first refused action (DROP TABLE is refused at ``DELETE(sqlite_master)``).
"""

from __future__ import annotations

import math
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pipelines.source2synth.tables import META_TABLE

REASONS = ("not_select", "multiple_statements", "denied", "timeout", "too_many_rows",
           "sql_error", "empty_result")
# load_extension and the file/shell functions some builds add; random* because an answer must be
# a fact of the table, the same on every run
DENIED_FUNCTIONS = frozenset({
    "load_extension", "readfile", "writefile", "edit", "fts3_tokenizer", "zipfile",
    "sqlar_compress", "sqlar_uncompress", "sqlite_dbpage", "random", "randomblob",
})
PROGRESS_OPS = 1000
MAX_SQL_CHARS = 100_000
_ACTIONS = {
    0: "COPY", 1: "CREATE_INDEX", 2: "CREATE_TABLE", 3: "CREATE_TEMP_INDEX",
    4: "CREATE_TEMP_TABLE", 5: "CREATE_TEMP_TRIGGER", 6: "CREATE_TEMP_VIEW", 7: "CREATE_TRIGGER",
    8: "CREATE_VIEW", 9: "DELETE", 10: "DROP_INDEX", 11: "DROP_TABLE", 12: "DROP_TEMP_INDEX",
    13: "DROP_TEMP_TABLE", 14: "DROP_TEMP_TRIGGER", 15: "DROP_TEMP_VIEW", 16: "DROP_TRIGGER",
    17: "DROP_VIEW", 18: "INSERT", 19: "PRAGMA", 20: "READ", 21: "SELECT", 22: "TRANSACTION",
    23: "UPDATE", 24: "ATTACH", 25: "DETACH", 26: "ALTER_TABLE", 27: "REINDEX", 28: "ANALYZE",
    29: "CREATE_VTABLE", 30: "DROP_VTABLE", 31: "FUNCTION", 32: "SAVEPOINT", 33: "RECURSIVE",
}
_SELECT, _READ, _UPDATE, _FUNCTION, _RECURSIVE = 21, 20, 23, 31, 33
_OK, _DENY = sqlite3.SQLITE_OK, sqlite3.SQLITE_DENY
_FIRST_WORD = re.compile(r"(?:select|with|values)\b", re.I)


@dataclass
class Result:
    """The outcome of one query: rows on success, else ``reason`` (and ``error``)."""

    sql: str
    columns: list[str] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    reason: str | None = None  # None on success, else one of REASONS
    error: str = ""
    denied: str | None = None  # reason "denied": the refused action
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.reason is None


# ----------------------------------------------------------------------------- statement checks
def _skip_space_and_comments(sql: str, i: int) -> int:
    n = len(sql)
    while i < n:
        if sql[i].isspace():
            i += 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
        else:
            break
    return i


def split_statements(sql: str) -> list[str]:
    """Split on ``;`` outside '…' literals, "…" `…` […] identifiers and comments.

    Statements that are empty (only whitespace and comments) are dropped. An unterminated
    literal or comment runs to the end (SQLite then reports the error).
    """
    out, start, i, n = [], 0, 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"`":
            j = sql.find(c, i + 1)
            while 0 <= j < n - 1 and sql[j + 1] == c:  # doubled quote inside the literal
                j = sql.find(c, j + 2)
            i = n if j < 0 else j + 1
        elif c == "[":
            j = sql.find("]", i + 1)
            i = n if j < 0 else j + 1
        elif sql.startswith("--", i) or sql.startswith("/*", i):
            i = _skip_space_and_comments(sql, i)
        elif c == ";":
            out.append(sql[start:i])
            start = i = i + 1
        else:
            i += 1
    out.append(sql[start:])
    return [s for s in out if _skip_space_and_comments(s, 0) < len(s)]


def check_statement(sql: str) -> tuple[str | None, str]:
    """(reason, message) for SQL that must not reach SQLite, else (None, the one statement)."""
    if len(sql) > MAX_SQL_CHARS:
        return "sql_error", f"query longer than {MAX_SQL_CHARS} characters"
    statements = split_statements(sql)
    if not statements:
        return "not_select", "empty query"
    if len(statements) > 1:
        return "multiple_statements", f"{len(statements)} statements; send one SELECT"
    stmt = statements[0]
    body = stmt[_skip_space_and_comments(stmt, 0):]
    if not _FIRST_WORD.match(body):
        word = (body.split(None, 1) or [""])[0][:20]
        return "not_select", f"not a SELECT statement (starts with {word!r})"
    return None, stmt


# ----------------------------------------------------------------------------- sandbox
class SqlSandbox:
    """A read-only, authorizer-guarded, time- and size-limited connection to one database.

    Thread-safe (one query at a time). Use as a context manager or call :meth:`close`.
    """

    def __init__(self, db_path: str | Path, *, timeout_s: float = 2.0, max_rows: int = 1000,
                 tables: Iterable[str] | None = None, max_value_bytes: int = 1_000_000):
        path = Path(db_path).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"database {path} does not exist")
        self.db_path = path
        self.timeout_s = float(timeout_s)
        self.max_rows = int(max_rows)
        self._lock = threading.Lock()
        self._deadline = math.inf
        self._timed_out = False
        self._denial: str | None = None
        self._conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None,
                                     check_same_thread=False)
        try:
            self._conn.execute("PRAGMA query_only=ON")
            existing = self._list_tables()
            if tables is None:
                allowed = self._indexed_tables() or existing
            else:
                allowed = list(tables)
                unknown = sorted(set(t.lower() for t in allowed) - set(existing))
                if unknown:
                    raise ValueError(f"tables not in {path.name}: {unknown}")
            self.tables = frozenset(t.lower() for t in allowed)
            self._real = frozenset(self._list_tables(everything=True))
            self._limit(max_value_bytes)
            self._conn.set_authorizer(self._authorize)
            self._conn.set_progress_handler(self._progress, PROGRESS_OPS)
        except BaseException:
            self._conn.close()
            raise

    # -- setup
    def _list_tables(self, everything: bool = False) -> list[str]:
        """User tables and views; ``everything``: also the index and SQLite's own tables."""
        if everything:
            return [r[0].lower() for r in self._conn.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")] + [
                "sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema"]
        return [r[0].lower() for r in self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name != ?", (META_TABLE,))]

    def _indexed_tables(self) -> list[str]:
        try:
            return [r[0].lower() for r in self._conn.execute(f'SELECT name FROM "{META_TABLE}"')]
        except sqlite3.DatabaseError:
            return []

    def _limit(self, max_value_bytes: int) -> None:
        conn = self._conn
        if hasattr(conn, "enable_load_extension"):
            conn.enable_load_extension(False)
        if hasattr(conn, "setlimit"):  # Python 3.11+
            conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_value_bytes)
            conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_CHARS * 4)

    # -- callbacks
    def _deny(self, action: int, arg1: str | None, arg2: str | None) -> int:
        if self._denial is None:
            args = [a for a in (arg1, arg2) if a]
            what = ".".join(args) if action in (_READ, _UPDATE) else ", ".join(args)
            self._denial = f"{_ACTIONS.get(action, str(action))}({what})"
        return _DENY

    def _authorize(self, action: int, arg1: str | None, arg2: str | None, dbname: str | None,
                   source: str | None) -> int:
        if action in (_SELECT, _RECURSIVE):
            return _OK
        if action == _READ:
            name = (arg1 or "").lower()
            if dbname in (None, "main") and name in self.tables:
                return _OK
            # "SELECT count(*) FROM c" reads no column of c: SQLite then reports the name with
            # column "", and c may be a CTE, which has no entry anywhere; allow that, except
            # for real tables, schema tables and table-valued pragmas
            if arg2 == "" and name and name not in self._real and not name.startswith(
                    ("sqlite_", "pragma_")):
                return _OK
            return self._deny(action, arg1, arg2)
        if action == _FUNCTION:
            if (arg2 or "").lower() in DENIED_FUNCTIONS:
                return self._deny(action, arg1, arg2)
            return _OK
        return self._deny(action, arg1, arg2)

    def _progress(self) -> int:
        if time.monotonic() > self._deadline:
            self._timed_out = True
            return 1  # interrupt
        return 0

    # -- queries
    def run(self, sql: str) -> Result:
        """Run one SELECT; never raises for bad SQL (see the module docstring)."""
        if not isinstance(sql, str):
            return Result(str(sql), reason="not_select", error="query is not a string")
        reason, text = check_statement(sql)
        if reason:
            return Result(sql, reason=reason, error=text)
        with self._lock:
            return self._run(sql, text)

    def _run(self, sql: str, stmt: str) -> Result:
        self._denial, self._timed_out = None, False
        t0 = time.monotonic()
        self._deadline = t0 + self.timeout_s
        res = Result(sql)
        cur = None
        try:
            cur = self._conn.execute(stmt)
            res.columns = [d[0] for d in cur.description or ()]
            rows = cur.fetchmany(self.max_rows + 1)
            if len(rows) > self.max_rows:
                res.reason, res.error = "too_many_rows", f"more than {self.max_rows} rows"
            elif not rows or all(v is None for r in rows for v in r):
                res.reason, res.error = "empty_result", "no rows" if not rows else "only NULLs"
                res.rows = [tuple(r) for r in rows]
            else:
                res.rows = [tuple(r) for r in rows]
        except Exception as e:  # noqa: BLE001 -- bad SQL must come back as a Result
            res.error = f"{type(e).__name__}: {e}"
            if self._timed_out:
                res.reason, res.error = "timeout", f"stopped after {self.timeout_s:g} s"
            elif self._denial is not None or "not authorized" in str(e):
                res.reason, res.denied = "denied", self._denial
            elif "one statement at a time" in str(e):
                res.reason = "multiple_statements"
            else:
                res.reason = "sql_error"
        finally:
            self._deadline = math.inf
            if cur is not None:
                try:
                    cur.close()
                except Exception:  # noqa: BLE001
                    pass
        res.elapsed_s = time.monotonic() - t0
        return res

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SqlSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cell_text(v: Any) -> str:
    """One result cell as text: integral floats without ".0", others to 15 significant digits."""
    if isinstance(v, float):
        if math.isfinite(v) and v == int(v) and abs(v) < 1e16:
            return str(int(v))
        return format(v, ".15g")
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return str(v)


def denotation(result: Result) -> list[str]:
    """The result's cells, row by row, as strings; NULL cells are left out."""
    return [cell_text(v) for row in result.rows for v in row if v is not None]
