"""Source2Synth mechanics without a model: seeds, the hop checks, SQL execution and its rejects,
soft matching, the slice split, imputation and the SFT export format."""

from __future__ import annotations

import json
from functools import partial

import pyarrow as pa
import pytest

from pipelines.source2synth import curation as cur
from pipelines.source2synth import multihop as mh
from pipelines.source2synth import tableqa as tq
from pipelines.source2synth.match import (
    denotation_match,
    em_f1,
    numeric_match,
    soft_match,
)
from pipelines.source2synth.tables import Table, build_database, load_infos


# ----------------------------------------------------------------------------- multi-hop
def test_bridge_leaked_and_the_hop_checks():
    row = {"entity": "Marta Kowalczyk", "a2": "Olsztyn", "passage_a": "Marta Kowalczyk founded Harbor Instruments.",
           "passage_b": "Marta Kowalczyk was born in Olsztyn in 1961."}
    assert mh.bridge_leaked("Where was Marta Kowalczyk born?", "Marta Kowalczyk")
    assert not mh.bridge_leaked("Where was the founder of Harbor Instruments born?", "Marta Kowalczyk")
    assert mh.check_merge(row, {"question": "Where was Marta Kowalczyk born?"}).startswith("bridge_leaked")
    assert mh.check_merge(row, {"question": "Where was the founder of Harbor Instruments born?"}) is None
    assert mh.check_merge(row, {"question": "The founder of Harbor Instruments"}).startswith("not_a_question")
    assert mh.check_q1(row, {"question": "Who founded Harbor Instruments?"}) is None
    assert mh.check_q1(row, {"question": "What did Marta Kowalczyk found?"}).startswith("answer_in_question")
    assert mh.check_q2(row, {"question": "Where was Marta Kowalczyk born?", "answer": "Olsztyn"}) is None
    assert mh.check_q2(row, {"question": "Where was she born?", "answer": "Olsztyn"}).startswith("entity_not_in")
    assert mh.check_q2(row, {"question": "Where was Marta Kowalczyk born?", "answer": "Gdansk"}).startswith(
        "answer_not_in_passage")


def _mentions(cid, doc, text, *ents):
    return {"chunk_id": cid, "doc_id": doc, "title": doc, "text": text,
            "mentions": [{"text": e, "label": "PERSON", "start": 0, "end": len(e)} for e in ents]}


def test_seeds_come_from_the_entity_index_then_text_search_and_are_seeded():
    rows = [_mentions("a1", "A", "Marta Kowalczyk founded Harbor.", "Marta Kowalczyk"),
            _mentions("b1", "B", "Marta Kowalczyk was born in Olsztyn.", "Marta Kowalczyk"),
            _mentions("c1", "C", "Jan Nowak met the mayor.", "Jan Nowak"),
            _mentions("d1", "D", "The mayor praised jan nowak warmly.", ),
            _mentions("e1", "E", "Nobody here.", "Zed Quux"),
            _mentions("f1", "F", "No entities at all.")]
    index = mh.entity_index(rows)
    seeds = {s["chunk_a"]: s for s in mh.choose_seeds(rows, index, rows, seed=0, max_chars=200)}
    assert seeds["a1"]["entity"] == "Marta Kowalczyk" and seeds["a1"]["chunk_b"] == "b1"
    assert seeds["a1"]["via"] == "entity_index"
    assert seeds["c1"]["via"] == "text_search" and seeds["c1"]["chunk_b"] == "d1"
    assert seeds["e1"]["reject_reason"] == "no_second_document"
    assert seeds["f1"]["reject_reason"] == "no_entity"
    again = {s["chunk_a"]: s for s in mh.choose_seeds(rows, index, rows, seed=0, max_chars=200)}
    assert again == seeds


def test_multihop_example_keeps_both_hops_and_the_chain():
    row = {"seed_id": "s", "entity": "Marta Kowalczyk", "label": "PERSON", "via": "entity_index",
           "q1": "Who founded Harbor Instruments?", "q2": "Where was Marta Kowalczyk born?", "a2": "Olsztyn",
           "doc_a": "A", "doc_b": "B", "chunk_a": "a1", "chunk_b": "b1", "title_a": "A", "title_b": "B",
           "passage_a": "pa", "passage_b": "pb", "prompt_id": "source2synth/merge@1", "model": "m", "seed": 0,
           "llm_output": json.dumps({"question": "Where was the founder of Harbor Instruments born?"})}
    ex = mh.build_examples(pa.Table.from_pylist([row])).to_pylist()[0]
    assert ex["answer"] == "Olsztyn" and ex["hop"] == 2 and ex["positives"] == ["a1", "b1"]
    meta = json.loads(ex["meta"])
    assert meta["q1"] == row["q1"] and meta["q2"] == row["q2"] and meta["a1"] == "Marta Kowalczyk"
    assert "Marta Kowalczyk" in ex["reasoning"] and "Olsztyn" in ex["reasoning"]


# ----------------------------------------------------------------------------- table QA
@pytest.fixture()
def db(tmp_path):
    t = Table("csv/200-csv/1.csv", ["Year", "City", "Visitors"],
              [["2010", "Gdansk", "1,200"], ["2011", "Olsztyn", "900"], ["2012", "Torun", "1,500"]])
    path = tmp_path / "tables.sqlite"
    build_database([t], path)
    return path


def _sql_rows(db, *queries, value="Olsztyn"):
    info = next(iter(load_infos(db).values()))
    return pa.Table.from_pylist([{"fact_id": f"f{i}", "table_id": info.table_id, "table_name": info.name,
                                  "db_path": str(db), "fact": "x", "value": value,
                                  "llm_output": json.dumps({"sql": q})} for i, q in enumerate(queries)]), info


def test_executed_sql_is_the_answer_and_failures_are_rejects_with_sql_and_error(db):
    batch, info = _sql_rows(db, f'SELECT "city" FROM "{info_name(db)}" WHERE "year" = 2011',
                            f'SELECT "city" FROM "{info_name(db)}" WHERE "year" = 1999',
                            f'SELECT nope FROM "{info_name(db)}"', f'DELETE FROM "{info_name(db)}"',
                            f'SELECT "city" FROM "{info_name(db)}" WHERE "year" = 2012')
    out = tq.execute(batch, timeout_s=2, max_rows=50, max_values=5, require_seed_value=True).to_pylist()
    reasons = [r["reject_reason"] for r in out]
    assert reasons == [None, "sql_empty_result", "sql_error", "sql_not_select", "seed_value_missing"]
    assert out[0]["answer"] == "Olsztyn" and out[0]["values"] == ["Olsztyn"]
    for r in out[1:]:
        detail = json.loads(r["reject_detail"])
        assert detail["sql"] and (detail.get("error") or detail.get("values") is not None)
    assert "no such column" in json.loads(out[2]["reject_detail"])["error"]


def test_the_sql_stage_check_runs_each_candidate_in_the_sandbox(db):
    """The LLM stage keeps the first candidate whose SQL executes and returns the seed value, and
    rejects one that finds its row by the answer itself (its question would state the answer)."""
    name = info_name(db)
    row = {"db_path": str(db), "value": "Olsztyn"}
    check = partial(tq.check_sql, timeout_s=2, max_rows=50, max_values=5, require_seed_value=True)
    assert check(row, {"sql": f'SELECT `city` FROM `{name}` WHERE `year` = \'2011\''}) is None  # numbers as text
    assert check(row, {"sql": f'SELECT "city" FROM "{name}" WHERE "year" = 1999'}).startswith("sql_empty_result")
    assert check(row, {"sql": f'SELECT `Olsztyn` FROM `{name}` WHERE `year` = 2011'}).startswith("sql_error")
    assert check(row, {"sql": f'SELECT "city" FROM "{name}" WHERE "year" = 2010'}).startswith("seed_value_missing")
    assert check(row, {"sql": f'SELECT "city" FROM "{name}" WHERE "city" = \'Olsztyn\''}).startswith("answer_in_sql")
    assert check(row, {"sql": f'DELETE FROM "{name}"'}).startswith("sql_not_select")
    before = db.read_bytes()
    assert check(row, {"sql": f'SELECT "city" FROM "{name}"; DROP TABLE "{name}"'}) is not None
    assert db.read_bytes() == before


def test_a_table_question_states_the_sqls_condition_and_not_its_answer():
    row = {"sql": "SELECT `role` FROM `t` WHERE `year` = '1979'", "values": ["Heimlich"]}
    assert tq.check_question(row, {"question": "What role did he play in 1979?"}) is None
    assert tq.check_question(row, {"question": "What is the result of the SQL statement?"}).startswith("sql_in_question")
    assert tq.check_question(row, {"question": "What role did he play?"}).startswith("condition_missing")
    assert tq.check_question(row, {"question": "Was Heimlich his role in 1979?"}).startswith("answer_in_question")
    assert tq.check_question({"sql": "SELECT COUNT(*) FROM `t`", "values": ["3"]},
                             {"question": "How many rows are there?"}) is None  # no condition to state


def test_sql_hints_name_the_values_column_and_a_cell_to_find_the_row_by():
    cells = [["year", "2011"], ["city", "O'Neil"], ["visitors", "900"]]
    h = tq.sql_hints(cells, "900")
    assert (h["value_column"], h["key_column"], h["key_value"]) == ("visitors", "year", "2011")
    assert h["row_sql"] == "`year` = '2011', `city` = 'O''Neil', `visitors` = '900'"
    assert tq.sql_hints(cells, "2011")["key_value"] == "O''Neil"  # quoted for SQL
    assert tq.sql_hints(cells, "Gdansk")["value_column"] == ""  # not in this row: no hint


def info_name(db) -> str:
    return next(iter(load_infos(db).values())).name


def test_sql_answer_must_contain_the_seed_value():
    assert tq.contains_value(["Olsztyn"], "olsztyn")
    assert tq.contains_value(["1200"], "1,200")
    assert tq.contains_value(["Olsztyn, Poland"], "Olsztyn")
    assert not tq.contains_value(["Gdansk"], "Olsztyn")
    assert not tq.contains_value([], "Olsztyn")


def test_fact_seed_rows_and_check(db):
    infos = load_infos(db)
    rows = tq.table_rows(infos, list(infos), db, seed=0, seeds_per_table=2, describe_rows=3)
    assert len(rows) == 2 and all(r["reject_reason"] is None for r in rows)
    assert rows == tq.table_rows(infos, list(infos), db, seed=0, seeds_per_table=2, describe_rows=3)
    r = rows[0]
    for row in rows:  # the small prompt's seed: a cell of the drawn row, under its header
        assert f"{row['seed_header']}: {row['seed_value']}" in row["row"] and row["seed_header"] in ("Year", "City", "Visitors")
    assert tq.check_fact(r, {"fact": "In 2011 the city was Olsztyn.", "value": "Olsztyn"}) is None
    assert tq.check_fact(r, {"fact": "The city was Krakow.", "value": "Krakow"}).startswith("value_not_in_table")
    assert tq.check_fact(r, {"fact": "A city.", "value": "Olsztyn"}).startswith("value_not_in_fact")


# ----------------------------------------------------------------------------- matching
def test_soft_match_rules():
    assert soft_match("The Eiffel Tower.", "eiffel tower")  # normalised exact match
    assert soft_match("It was built in Paris, France", "Paris")  # containment, whole words
    assert not soft_match("not sure", "no")  # not inside a word
    assert soft_match("about 2,013 people", "2013")  # numbers as numbers
    assert numeric_match("3.14159", "3.14", tolerance=0.01)
    assert not numeric_match("3.5", "3.14", tolerance=0.01)
    assert numeric_match("1005", "1000", tolerance=0.01) and not numeric_match("1011", "1000", tolerance=0.01)
    assert not soft_match("", "Paris") and not soft_match("Paris", "")
    assert denotation_match(["1,234", "b"], ["B", "1234"])  # order-free, numbers canonical
    assert not denotation_match(["a"], ["a", "b"])
    assert em_f1("the Eiffel tower", "Eiffel Tower") == (1.0, 1.0)
    em, f1 = em_f1("Eiffel tower in Paris", "Eiffel Tower")
    assert em == 0.0 and 0.6 < f1 < 0.7


def test_table_answer_matches_by_executed_sql(db):
    name = info_name(db)
    row = {"task": "table_qa", "db_path": str(db), "targets": ["Olsztyn"], "answer": "Olsztyn", "tolerance": 0.01}
    assert cur.answer_matches(row, {"sql": f'SELECT "city" FROM "{name}" WHERE "year" = 2011',
                                    "answer": "wrong"}) == (True, "executed_sql")
    assert cur.answer_matches(row, {"sql": "SELECT 1", "answer": "olsztyn"}) == (True, "denotation")
    assert cur.answer_matches(row, {"sql": "DROP TABLE x", "answer": "Gdansk"}) == (False, "")
    assert cur.check_answer(row, {"sql": "", "answer": "Gdansk"}).startswith("no_match")


# ----------------------------------------------------------------------------- curation
def test_slice_split_is_seeded_stratified_and_half():
    ids = {"multi_hop": [f"m{i}" for i in range(10)], "table_qa": [f"t{i}" for i in range(7)]}
    a = cur.split_slices(ids, 0.5, seed=3)
    assert a == cur.split_slices({k: list(reversed(v)) for k, v in ids.items()}, 0.5, seed=3)
    assert sum(1 for i in ids["multi_hop"] if a[i] == 0) == 5 and sum(1 for i in ids["table_qa"] if a[i] == 0) == 4
    assert a != cur.split_slices(ids, 0.5, seed=4)


def test_imputation_fills_missing_reasoning_and_checks_sql(db):
    ex = {"task": "multi_hop", "reasoning": "", "answer": "Olsztyn", "meta": "{}", "sql": None}
    filled, did = cur.impute(ex, {"reasoning": "The founder is Marta; she was born in Olsztyn.", "answer": "Olsztyn"},
                             "missing")
    assert did and filled["reasoning"].startswith("The founder")
    kept, did = cur.impute({**ex, "reasoning": "given"}, {"reasoning": "other", "answer": "x"}, "missing")
    assert not did and kept["reasoning"] == "given"
    assert cur.impute({**ex, "reasoning": "given"}, {"reasoning": "other", "answer": "x"}, "always")[1]
    tex = {"task": "table_qa", "reasoning": "", "answer": "Olsztyn", "sql": "",
           "meta": json.dumps({"db_path": str(db), "values": ["Olsztyn"]})}
    good = f'SELECT "city" FROM "{info_name(db)}" WHERE "year" = 2011'
    assert cur.impute(tex, {"sql": good, "answer": "Olsztyn"}, "missing")[0]["sql"] == good
    assert not cur.impute(tex, {"sql": "SELECT 2", "answer": "Olsztyn"}, "missing")[1]


def test_retention_per_slice_and_task():
    gen = [{"slice": 0, "task": "multi_hop", "example_id": "a"}, {"slice": 1, "task": "multi_hop", "example_id": "b"},
           {"slice": 1, "task": "multi_hop", "example_id": "c"}, {"slice": 1, "task": "table_qa", "example_id": "d"}]
    r = cur.retention(gen, {"b"}, set(), trained=True)
    assert r["slice_0"] == {"multi_hop": {"examples": 1}}
    assert r["slice_1"]["multi_hop"] == {"examples": 2, "kept": 1, "retention": 0.5}
    assert r["slice_1"]["table_qa"]["kept"] == 0


def test_exported_chat_records_read_back_by_the_sft_loader(tmp_path, db):
    from collections import Counter

    from transformers import AutoTokenizer

    from actors.models import embedded_llm_dir
    from training.chat_data import build_examples, load_records

    info = next(iter(load_infos(db).values()))
    exs = [{"example_id": "m", "task": "multi_hop", "query": "Where was the founder born?", "answer": "Olsztyn",
            "reasoning": "chain", "sql": None,
            "meta": json.dumps({"passages": [{"title": "A", "text": "pa"}, {"title": "B", "text": "pb"}]})},
           {"example_id": "t", "task": "table_qa", "query": "Which city in 2011?", "answer": "Olsztyn",
            "reasoning": "r", "sql": 'SELECT "city" FROM x', "meta": json.dumps(
                {"db_path": str(db), "table_id": info.table_id, "values": ["Olsztyn"]})}]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(cur.chat_record(e)) + "\n" for e in exs))
    bad: Counter = Counter()
    records = load_records(path, bad)
    assert len(records) == 2 and not bad
    assert json.loads(records[0][-1]["content"]) == {"reasoning": "chain", "answer": "Olsztyn"}
    assert json.loads(records[1][-1]["content"])["sql"].startswith("SELECT")
    assert info.name in records[1][-2]["content"] and "Passage 2 (B): pb" in records[0][-2]["content"]
    tok = AutoTokenizer.from_pretrained(embedded_llm_dir())
    assert len(build_examples(tok, records, 1024)) == 2
