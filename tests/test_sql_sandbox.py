"""The SQL sandbox: every escape is rejected with a clear reason and the database is untouched."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import pytest

from pipelines.source2synth.sandbox import (
    REASONS,
    SqlSandbox,
    denotation,
    split_statements,
)
from pipelines.source2synth.tables import Table, build_database

TIMEOUT = 0.5
SLACK = 1.5  # seconds over the limit a timed-out query may take on a loaded 2-core machine


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sandbox")
    people = Table("people.csv", ["Name", "Age", "Score"],
                   [[f"p{i}", str(20 + i % 50), f"{i * 1.5:.1f}"] for i in range(200)])
    secret = Table("secret", ["Key"], [["hunter2"]])
    infos = build_database([people, secret], root / "tables.sqlite")
    assert infos["people.csv"].name == "t_people"
    return root / "tables.sqlite"


@pytest.fixture(scope="module")
def sandbox(db):
    with SqlSandbox(db, timeout_s=TIMEOUT, max_rows=100, tables=["t_people"]) as sb:
        yield sb


@pytest.fixture(autouse=True)
def untouched(db):
    """After every test the database's bytes and its folder's listing are as before."""
    before, files = _sha(db), sorted(p.name for p in db.parent.iterdir())
    yield
    assert _sha(db) == before
    assert sorted(p.name for p in db.parent.iterdir()) == files


def test_select_numbers_and_denotation(sandbox):
    r = sandbox.run('SELECT "name", "age", "score" FROM t_people WHERE "age" = 20 ORDER BY rowid')
    assert r.ok and r.reason is None and r.columns == ["name", "age", "score"]
    assert r.rows[0] == ("p0", 20, 0.0) and len(r.rows) == 4
    assert denotation(r)[:3] == ["p0", "20", "0"]  # 0.0 prints as "0"
    assert denotation(sandbox.run("SELECT avg(age) FROM t_people")) == ["44.5"]


def test_semicolon_inside_literals_and_comments_is_one_statement(sandbox):
    for sql in ["SELECT 'a;b' FROM t_people LIMIT 1", "SELECT 'a;b';",
                "SELECT 'it''s; fine' -- trailing; comment", "SELECT 1 /* ; */",
                'SELECT "name" AS "x;y" FROM t_people LIMIT 1;  \n']:
        r = sandbox.run(sql)
        assert r.ok, (sql, r.reason, r.error)
    assert denotation(sandbox.run("SELECT 'a;b';")) == ["a;b"]
    assert denotation(sandbox.run("SELECT 'it''s; fine' -- x;")) == ["it's; fine"]


@pytest.mark.parametrize("sql", [
    "SELECT 1; DROP TABLE t_people", "SELECT 1;SELECT 2", "SELECT ';'; DELETE FROM t_people",
    "SELECT 1; -- x\nDELETE FROM t_people", "SELECT 1; ATTACH 'x.db' AS x",
])
def test_stacked_statements(sandbox, sql):
    r = sandbox.run(sql)
    assert r.reason == "multiple_statements" and not r.rows


def test_split_statements():
    assert split_statements("SELECT 1;; ;SELECT 'a;' /* ; */ ; -- ;") == [
        "SELECT 1", "SELECT 'a;' /* ; */ "]
    assert split_statements('SELECT "a;b", [c;d], `e;f`') == ['SELECT "a;b", [c;d], `e;f`']
    assert split_statements("  -- only a comment\n ;") == []


WRITES = {  # statement -> the action the authorizer refuses first
    "INSERT INTO t_people VALUES ('x', 1, 1, '1', 1, '1')": "INSERT(t_people)",
    "UPDATE t_people SET age = 0": "UPDATE(t_people.age)",
    "DELETE FROM t_people": "DELETE(t_people)",
    "DROP TABLE t_people": "DELETE(sqlite_master)",
    "CREATE TABLE x (a)": "INSERT(sqlite_master)",
    "CREATE TEMP TABLE x (a)": "INSERT(sqlite_temp_master)",
    "ALTER TABLE t_people RENAME TO x": "ALTER_TABLE(main, t_people)",
    "PRAGMA writable_schema=1": "PRAGMA(writable_schema, 1)",
    "PRAGMA query_only=0": "PRAGMA(query_only, 0)",
    "BEGIN IMMEDIATE": "TRANSACTION(BEGIN)",
    "ANALYZE": "INSERT(sqlite_master)",
    "DETACH main": "DETACH(main)",
}


@pytest.mark.parametrize("sql", sorted(WRITES))
def test_writes_are_rejected_by_each_layer(sandbox, sql):
    r = sandbox.run(sql)
    assert r.reason == "not_select" and "not a SELECT" in r.error
    # the authorizer alone (the statement check bypassed) refuses it too, and says what
    r = sandbox._run(sql, sql)
    assert r.reason == "denied", (r.reason, r.error)
    assert r.denied == WRITES[sql]


def test_write_hidden_behind_with_is_denied(sandbox):
    r = sandbox.run("WITH x AS (SELECT 1) DELETE FROM t_people")
    assert r.reason == "denied" and r.denied == "DELETE(t_people)"
    r = sandbox.run("WITH x AS (SELECT 1) INSERT INTO t_people SELECT * FROM t_people")
    assert r.reason == "denied"
    assert sandbox.run("SELECT count(*) FROM t_people").rows == [(200,)]


@pytest.mark.parametrize("sql", ["ATTACH DATABASE '{f}' AS x", "VACUUM INTO '{f}'"])
def test_attach_creates_no_file(sandbox, tmp_path, sql):
    target = tmp_path / "escape.db"
    sql = sql.format(f=target)
    assert sandbox.run(sql).reason == "not_select"
    r = sandbox._run(sql, sql)
    assert r.reason == "denied" and r.denied == f"ATTACH({target})"
    assert not target.exists()


def test_recursive_cte_times_out(sandbox):
    t0 = time.monotonic()
    r = sandbox.run("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) "
                    "SELECT count(*) FROM c")
    took = time.monotonic() - t0
    assert r.reason == "timeout" and "0.5 s" in r.error
    assert TIMEOUT <= took < TIMEOUT + SLACK
    assert sandbox.run("SELECT count(*) FROM t_people").ok  # the connection still works


def test_cartesian_blow_up(sandbox):
    t0 = time.monotonic()
    r = sandbox.run("SELECT count(*) FROM t_people a, t_people b, t_people c, t_people d, "
                    "t_people e")
    assert r.reason == "timeout" and time.monotonic() - t0 < TIMEOUT + SLACK
    r = sandbox.run("SELECT * FROM t_people a, t_people b, t_people c")
    assert r.reason == "too_many_rows" and r.rows == []


def test_huge_result(sandbox):
    r = sandbox.run("SELECT * FROM t_people")  # 200 rows, max_rows 100
    assert r.reason == "too_many_rows" and "100" in r.error and r.rows == []
    assert sandbox.run("SELECT * FROM t_people LIMIT 100").ok
    r = sandbox.run("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c "
                    "LIMIT 1000000) SELECT x FROM c")
    assert r.reason == "too_many_rows"


def test_dangerous_functions(sandbox):
    r = sandbox.run("SELECT load_extension('/tmp/evil.so')")
    assert r.reason == "denied" and r.denied == "FUNCTION(load_extension)"
    assert sandbox.run("SELECT random()").denied == "FUNCTION(random)"
    assert sandbox.run("SELECT upper(name) FROM t_people LIMIT 1").rows == [("P0",)]


def test_only_allowed_tables_are_readable(sandbox):
    for sql, denied in [("SELECT * FROM sqlite_master", "READ(sqlite_master.type)"),
                        ("SELECT count(*) FROM sqlite_master", "READ(sqlite_master)"),
                        ("SELECT key FROM t_secret", "READ(t_secret.key)"),
                        ("SELECT count(*) FROM t_secret", "READ(t_secret)"),
                        ("SELECT * FROM _synthrag_tables", "READ(_synthrag_tables.table_id)"),
                        ("SELECT * FROM pragma_table_info('t_people')", "UPDATE(sqlite_master.type)")]:
        r = sandbox.run(sql)
        assert r.reason == "denied" and r.denied == denied, (sql, r.denied)
    assert sandbox.run("WITH c AS (SELECT 1) SELECT count(*) FROM c").rows == [(1,)]


def test_default_tables_come_from_the_index_and_schema_reads_need_no_allowance(db):
    # a fresh connection: its first query loads the schema with sqlite_master denied
    with SqlSandbox(db, timeout_s=TIMEOUT) as sb:
        assert sb.tables == {"t_people", "t_secret"}
        assert sb.run("SELECT key FROM t_secret").rows == [("hunter2",)]
        assert sb.run("SELECT * FROM sqlite_master").reason == "denied"
    with pytest.raises(ValueError, match="t_nope"):
        SqlSandbox(db, tables=["t_nope"])


def test_errors_and_empty_results(sandbox):
    assert sandbox.run("").reason == "not_select"
    assert sandbox.run(" ; -- nothing").reason == "not_select"
    assert sandbox.run(None).reason == "not_select"  # type: ignore[arg-type]
    assert sandbox.run("EXPLAIN SELECT 1").reason == "not_select"
    r = sandbox.run("SELECT nope FROM t_people")
    assert r.reason == "sql_error" and "no such column" in r.error
    assert sandbox.run("SELEC 1 FROM t_people").reason == "not_select"
    assert sandbox.run("SELECT FROM WHERE").reason == "sql_error"
    assert sandbox.run("SELECT 'unterminated").reason == "sql_error"
    assert sandbox.run("SELECT * FROM t_people WHERE 0").reason == "empty_result"
    r = sandbox.run("SELECT max(age) FROM t_people WHERE age > 1000")
    assert r.reason == "empty_result" and r.rows == [(None,)] and denotation(r) == []
    if hasattr(sqlite3.Connection, "setlimit"):
        assert sandbox.run("SELECT zeroblob(100000000)").reason == "sql_error"
    assert all(sandbox.run(s).reason in REASONS for s in ["x", "SELECT 1 +", "WITH"])


def test_read_only_even_without_the_authorizer(db):
    """Layer 1 alone: the read-only URI connection refuses writes."""
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DELETE FROM t_people")
    finally:
        conn.close()
