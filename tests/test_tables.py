"""Table loading (CSV, JSONL, Parquet, SQLite) into a run's SQLite, and WTQ denotation scoring."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.eval.tableqa_metrics import (
    DateValue,
    NumberValue,
    QuestionsError,
    StringValue,
    canonical,
    check_denotation,
    context_key,
    context_to_table_id,
    denotation_accuracy,
    denotation_correct,
    index_table_ids,
    normalize,
    read_questions,
    to_value,
    tsv_unescape_list,
)
from pipelines.source2synth.sandbox import SqlSandbox, denotation
from pipelines.source2synth.tables import (
    META_TABLE,
    Table,
    TableError,
    build_database,
    column_names,
    copy_database,
    describe,
    infer_type,
    load_infos,
    parse_number,
    prepare_database,
    read_tables,
)

WTQ = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitablequestions"
needs_wtq = pytest.mark.skipif(not (WTQ / "tables.jsonl").exists(), reason="no shared WTQ data")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _query(db: Path, sql: str) -> list[tuple]:
    with SqlSandbox(db) as sb:
        r = sb.run(sql)
    assert r.ok, (sql, r.reason, r.error)
    return r.rows


# ----------------------------------------------------------------------------- real WTQ tables
@pytest.fixture(scope="module")
def wtq_db(tmp_path_factory):
    tables = read_tables(WTQ / "tables.jsonl")
    db = tmp_path_factory.mktemp("wtq") / "tables.sqlite"
    return tables, build_database(tables, db), db


@needs_wtq
def test_wtq_jsonl_numbers_text_and_quotes(wtq_db):
    tables, infos, db = wtq_db
    assert len(tables) == len(infos) == 300
    assert all(len(r) == len(t.header) for t in tables for r in t.rows)
    by_id = {t.table_id: t for t in tables}
    # the jsonl's own "rows" split this cell at a comma and mangled the quotes; "csv" has it
    assert by_id["csv/202-csv/178.csv"].rows[0][3] == 'Episode: "Hair Today, Gone Tomorrow"'
    info = infos["csv/204-csv/420.csv"]
    cols = {c.header: c for c in info.columns}
    assert cols["Aggregate points"].type == "INTEGER" and cols["Song"].type == "TEXT"
    name = cols["Aggregate points"].name
    rows = _query(db, f'SELECT "{name}", "{name}__text", typeof("{name}"), "song" '
                      f'FROM "{info.name}" ORDER BY rowid LIMIT 1')
    assert rows == [(142691767, "142,691,767", "integer", '"Lovey-Dovey"')]
    assert _query(db, f'SELECT sum("{name}") FROM "{info.name}"')[0][0] > 10**9


@needs_wtq
def test_wtq_odd_headers_are_sanitised_and_queryable(wtq_db):
    _, infos, db = wtq_db
    dup = infos["csv/203-csv/147.csv"]  # "City/Municipality" twice, headers with newlines
    assert [c.name for c in dup.columns][:3] == ["city_municipality", "city_municipality_2",
                                                 "no_of_barangays"]
    assert dup.columns[2].header == "No. of\nBarangays"
    assert dup.header_map["Mayor\n(2010–2013)"] == "mayor_2010_2013"
    odd = infos["csv/203-csv/807.csv"]  # '' and quoted headers
    assert [c.name for c in odd.columns] == ["col_1", "be", "remain", "give", "save"]
    assert odd.columns[1].header == "'be'"
    assert _query(db, f'SELECT "col_1", "be" FROM "{odd.name}" ORDER BY rowid LIMIT 1') == [
        ("1st sg", "esmì")]
    years = infos["csv/204-csv/18.csv"]  # headers that are numbers, one empty
    assert years.columns[1].name == "c_2010" and years.columns[-1].name == "col_11"
    text = describe(dup, n_rows=2)
    assert '"city_municipality_2" TEXT' in text and '"population_2010" INTEGER' in text
    assert 'original text in "population_2010__text"' in text and "Baao" in text
    assert "Bato" not in text  # third row
    assert load_infos(db)["csv/203-csv/147.csv"] == dup


# ----------------------------------------------------------------------------- CSV, Parquet
def test_csv_types_odd_headers_and_original_text(tmp_path):
    (tmp_path / "scores.csv").write_text(
        '"",Team name,Team name,"Say ""hi""",Total (%),1st,rowid\n'
        '1,Red,A,"x, y",45%,"1,234",a\n'
        "2,Blue,B,z,—,-7.5,b\n"
        "3,Green,C,,12.5%,0,c\n", encoding="utf-8")
    [t] = read_tables(tmp_path / "scores.csv")
    assert t.table_id == "scores" and t.rows[0][3] == "x, y"
    infos = build_database([t], tmp_path / "db.sqlite")
    info = infos["scores"]
    assert [(c.name, c.type) for c in info.columns] == [
        ("col_1", "INTEGER"), ("team_name", "TEXT"), ("team_name_2", "TEXT"),
        ("say_hi", "TEXT"), ("total", "REAL"), ("c_1st", "REAL"), ("rowid_col", "TEXT")]
    rows = _query(tmp_path / "db.sqlite",
                  'SELECT rowid, "total", "total__text", "c_1st", "c_1st__text", "say_hi" '
                  'FROM "t_scores" ORDER BY rowid')
    assert rows == [(1, 45.0, "45%", 1234.0, "1,234", "x, y"), (2, None, "—", -7.5, "-7.5", "z"),
                    (3, 12.5, "12.5%", 0.0, "0", "")]


def test_wtq_style_csv_escapes(tmp_path):
    (tmp_path / "w.csv").write_text('"Song","Year"\n"\\"Fall\\", again","2008"\n')
    [t] = read_tables(tmp_path / "w.csv")
    assert t.rows == [['"Fall", again', "2008"]]


def test_folder_of_csvs_and_parquet(tmp_path):
    (tmp_path / "a.csv").write_text("x,y\n1,2\n")
    (tmp_path / "204-csv").mkdir()
    (tmp_path / "204-csv" / "590.csv").write_text("Name\nAnn\n")
    (tmp_path / "README.md").write_text("not a table")
    (tmp_path / ".hidden.csv").write_text("bad")
    pq.write_table(pa.table({"City": ["Oslo", None], "Pop": [700000, 5], "Area": [1.5, None]}),
                   tmp_path / "cities.parquet")
    tables = {t.table_id: t for t in read_tables(tmp_path)}
    assert sorted(tables) == ["204-csv/590", "a", "cities"]
    assert tables["cities"].rows == [["Oslo", "700000", "1.5"], ["", "5", ""]]
    infos = build_database(tables.values(), tmp_path / "out" / "db.sqlite")
    assert infos["204-csv/590"].name == "t_204_csv_590"
    cities = {c.header: c.type for c in infos["cities"].columns}
    assert cities == {"City": "TEXT", "Pop": "INTEGER", "Area": "REAL"}
    assert _query(tmp_path / "out" / "db.sqlite", 'SELECT max("pop") FROM "t_cities"') == [
        (700000,)]


# ----------------------------------------------------------------------------- SQLite inputs
@pytest.fixture
def user_db(tmp_path):
    src = tmp_path / "user" / "mine.db"
    src.parent.mkdir()
    conn = sqlite3.connect(src)
    conn.execute('CREATE TABLE "my table" (id INTEGER PRIMARY KEY, "Full name" TEXT, w REAL)')
    conn.executemany('INSERT INTO "my table" VALUES (?, ?, ?)', [(1, "Ann", 1.5), (2, "Bo", None)])
    conn.execute("CREATE TABLE other (v)")
    conn.execute("INSERT INTO other VALUES (x'00ff')")
    conn.commit()
    conn.close()
    return src


def test_sqlite_copy_leaves_the_original_alone(user_db, tmp_path):
    before, listing = _sha(user_db), sorted(p.name for p in user_db.parent.iterdir())
    infos = copy_database(user_db, tmp_path / "run" / "tables.sqlite")
    assert sorted(infos) == ["my table", "other"]
    my = infos["my table"]
    assert [(c.name, c.type) for c in my.columns] == [("id", "INTEGER"), ("Full name", "TEXT"),
                                                      ("w", "REAL")]
    assert my.n_rows == 2 and my.sample[0] == ["1", "Ann", "1.5"]
    assert '"Full name" TEXT' in describe(my)
    assert _query(tmp_path / "run" / "tables.sqlite", 'SELECT "Full name" FROM "my table" '
                  "WHERE w IS NULL") == [("Bo",)]
    tables = read_tables(user_db)  # as Tables, read from a private copy
    assert [t.table_id for t in tables] == ["my table", "other"]
    assert tables[0].header == ["id", "Full name", "w"] and tables[0].rows[1] == ["2", "Bo", ""]
    infos2 = prepare_database(user_db, tmp_path / "run2.sqlite")
    assert infos2 == load_infos(tmp_path / "run2.sqlite")
    assert _sha(user_db) == before
    assert sorted(p.name for p in user_db.parent.iterdir()) == listing
    with pytest.raises(TableError, match="exists already"):
        copy_database(user_db, tmp_path / "run2.sqlite")


def test_sqlite_copy_includes_the_wal(tmp_path):
    src = tmp_path / "w.sqlite"
    conn = sqlite3.connect(src)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (a)")
    conn.execute("INSERT INTO t VALUES (42)")
    conn.commit()  # still open: the rows live in w.sqlite-wal only
    try:
        copy_database(src, tmp_path / "copy.sqlite")
    finally:
        conn.close()
    assert _query(tmp_path / "copy.sqlite", "SELECT a FROM t") == [(42,)]
    with sqlite3.connect(tmp_path / "copy.sqlite") as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert c.execute(f'SELECT count(*) FROM "{META_TABLE}"').fetchone()[0] == 1


# ----------------------------------------------------------------------------- malformed inputs
def _err(path: Path, **kw) -> str:
    with pytest.raises(TableError) as e:
        read_tables(path, **kw)
    return str(e.value)


def test_malformed_inputs_name_file_and_line(tmp_path):
    good = json.dumps({"table_id": "a", "header": ["x"], "rows": [["1"]]})
    p = tmp_path / "t.jsonl"
    p.write_text(good + "\n\n" + '{"table_id": "b", "header": ["x"], "rows": [["1"]\n')
    assert f"{p}:3: malformed JSON" in _err(p)
    p.write_text(good + "\n" + json.dumps({"table_id": "b", "header": ["x", "y"],
                                           "rows": [["1", "2"], ["3"]]}) + "\n")
    assert f"{p}:2: table 'b': row 2 has 1 cells, the header has 2" in _err(p)
    p.write_text(json.dumps({"table_id": "c", "header": [], "rows": []}) + "\n")
    assert f"{p}:1: table 'c': empty or missing header" in _err(p)
    p.write_text(json.dumps({"header": ["x"], "rows": []}) + "\n")
    assert f"{p}:1: missing or empty table_id" in _err(p)
    p.write_text(json.dumps({"table_id": "d", "header": ["x"], "rows": [[["nested"]]]}) + "\n")
    assert "a cell is a list" in _err(p)
    p.write_text(json.dumps({"table_id": "e", "csv": 'a,b\n1,2\n3\n'}) + "\n")
    assert f"{p}:1: field 'csv': table 'e': row 2 has 1 cells" in _err(p)
    p.write_text(good + "\n" + good + "\n")
    assert "duplicate table_id 'a'" in _err(p)

    c = tmp_path / "bad.csv"
    c.write_text("a,b\n1,2\n\"multi\nline\",3\n4,5,6\n")
    assert f"{c}:5: table 'bad': row 3 has 3 cells, the header has 2" in _err(c)
    c.write_text("")
    assert f"{c}:1: table 'bad': empty file (no header)" in _err(c)
    c.write_text("\n1,2\n")
    assert "empty header" in _err(c)
    c.write_bytes(b"a,b\n\xff\xfe,1\n")
    assert "not UTF-8" in _err(c)
    x = tmp_path / "t.xlsx"
    x.write_text("?")
    assert f"{x}: unknown table format '.xlsx'" in _err(x)
    fake = tmp_path / "fake.sqlite"
    fake.write_text("hello")
    assert "not an SQLite database" in _err(fake)
    bad_pq = tmp_path / "bad.parquet"
    bad_pq.write_text("nope")
    assert "not a readable Parquet file" in _err(bad_pq)
    assert "does not exist" in _err(tmp_path / "missing.csv")
    with pytest.raises(TableError, match="row 1 has 1 cells"):
        build_database([Table("z", ["a", "b"], [["1"]])], tmp_path / "z.sqlite")
    assert not (tmp_path / "z.sqlite").exists() and not (tmp_path / "z.sqlite.tmp").exists()


def test_number_parsing_and_types():
    assert [parse_number(s) for s in ["1,234", " -3.5 ", "45%", "+7", ".5", "−2", "007"]] == [
        1234, -3.5, 45, 7, 0.5, -2, 7]
    assert [parse_number(s) for s in ["1,23", "1e5", "$5", "12 kg", "", "-", "1.2.3", "1,"]] == [
        None] * 8
    assert parse_number("99999999999999999999") == 1e20  # too big for INTEGER: stored as REAL
    assert infer_type(["1", "", "—", "2"]) == "INTEGER"
    assert infer_type(["1", "2.5"]) == "REAL"
    assert infer_type(["", "n/a"]) == "TEXT" and infer_type(["1", "x"]) == "TEXT"
    assert column_names(["a", "A", "a_2", "", "Äb c", "x__text", "年"]) == [
        "a", "a_2", "a_2_2", "col_4", "ab_c", "x_text", "col_7"]


# ----------------------------------------------------------------------------- WTQ metric
def test_normalize_like_the_official_evaluator():
    assert normalize("  Crème  Brûlée. ") == "creme brulee"
    assert normalize("“Away”") == "away" and normalize('"Away"') == "away"
    assert normalize("Bangkok, Thailand[1]") == "bangkok, thailand"
    assert normalize("Paris (France)") == "paris"
    assert normalize("1990–1991") == "1990-1991"
    assert normalize("Smith†") == "smith"


def test_values_and_denotations():
    assert isinstance(to_value("3.0"), NumberValue) and to_value("3.0") == to_value("3")
    assert isinstance(to_value("2001-xx-xx"), NumberValue)  # a year only
    assert to_value("xx-05-12").ymd == (-1, 5, 12)
    assert isinstance(to_value("2001-13-01"), StringValue)
    assert DateValue(2001, 5, -1).normalized == "2001-5-xx"
    assert denotation_correct(["3"], "3.0") and denotation_correct([3.0], "3")  # type: ignore
    assert denotation_correct(["2001-05-12"], "2001-5-12")
    assert denotation_correct(["1234"], "1,234")  # canon stands in for CoreNLP
    assert not denotation_correct(["1234"], "1,234", canon=False)  # the bare official rule
    assert canonical("-3,729.7") == "-3729.7" and canonical("1,23") == "1,23"
    assert denotation_correct(["Spain", "morocco", "France"], "Morocco|France|Spain")
    assert not denotation_correct(["Spain", "France"], "Morocco|France|Spain")
    assert not denotation_correct(["Spain", "France", "Italy", "Morocco"], "Morocco|France|Spain")
    assert denotation_correct(["a", "A"], "a")  # deduplicated as values
    assert denotation_correct(['"Away"'], "Away") and not denotation_correct(["Away"], "Away2")
    assert tsv_unescape_list(r"a\pb|c\nd|e\\f") == ["a|b", "c\nd", "e\\f"]
    assert check_denotation([to_value("5")], [to_value("5.0000001")])


@needs_wtq
def test_read_questions_and_match_tables(wtq_db, tmp_path):
    tables, infos, db = wtq_db
    qs = read_questions(WTQ / "questions.tsv")
    assert len(qs) > 2000 and qs[0].id == "nt-1" and qs[0].targets == ["Bangkok, Thailand"]
    multi = next(q for q in qs if q.id == "nt-23")
    assert multi.targets == ["Morocco", "France", "Spain"]
    index = index_table_ids(infos)
    assert all(context_to_table_id(q.context, index) == q.context for q in qs[:200])
    # tables read from a WTQ folder have ids like "204-csv/622"; contexts still find them
    assert context_key("csv/204-csv/622.tsv") == "204-csv/622"
    assert context_to_table_id("csv/204-csv/622.csv", ["204-csv/622", "622"]) == "204-csv/622"
    assert context_to_table_id("csv/299-csv/1.csv", ["204-csv/622"]) is None
    # a denotation straight from the sandbox scores against a real target
    q = next(q for q in qs if q.id == "nt-18")  # "how many movies have links ..." -> 20
    info = infos[context_to_table_id(q.context, index)]
    with SqlSandbox(db) as sb:
        got = denotation(sb.run("SELECT 20"))
        assert sb.run(f'SELECT count(*) FROM "{info.name}"').ok
    assert denotation_correct(got, q.target_value)
    acc = denotation_accuracy({"nt-1": ["bangkok, thailand"], "nt-18": ["21"]},
                              [qs[0], q, multi])
    assert acc == {"n": 3, "correct": 1, "missing": 1, "accuracy": 1 / 3}
    bad = tmp_path / "q.tsv"
    bad.write_text("id\tutterance\tcontext\ttargetValue\nnt-1\tq?\tcsv/1-csv/1.csv\n")
    with pytest.raises(QuestionsError, match=r"q.tsv:2: 3 fields, the header has 4"):
        read_questions(bad)
    bad.write_text("id\tquestion\n")
    with pytest.raises(QuestionsError, match=r"q.tsv:1: header lacks"):
        read_questions(bad)
