"""Source2Synth table QA with executed SQL (paper §3.2, "Tabular question answering").

    --tables PATH ──prepare_database──▶ RUN/source2synth/tables.sqlite (a run-local copy; the
                  user's file is only read)
    table ──seed (LLM): a fact stated by a row drawn at random (seeded), and its cell value
          ──sql (LLM): a query that would retrieve it
          ──EXECUTED in the sandbox (read-only, one SELECT, timeout, row cap)──▶ the result is the
            answer; errors, empty results and results without the seed's value are rejects
            carrying the SQL and the error text
          ──question (LLM): the natural-language question the SQL answers
    ──▶ example: query, answer (executed), sql, reasoning "SQL → result", the table in ``meta``
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pyarrow as pa

from pipelines.core.schema import REJECT_DETAIL, REJECT_REASON, dumps, stable_id
from pipelines.eval.tableqa_metrics import normalize
from pipelines.source2synth.multihop import (
    EXAMPLE_STAGING,
    METHOD,
    _keep,
    _outputs,
    _reject,
)
from pipelines.source2synth.sandbox import SqlSandbox, denotation
from pipelines.source2synth.tables import TableInfo, describe, load_infos

TASK = "table_qa"
MAX_CELLS = 5000  # cells a fact's value is checked against (the table's first rows)


def table_rows(infos: dict[str, TableInfo], chosen: list[str], db_path: Path, *, seed: int,
               seeds_per_table: int, describe_rows: int) -> list[dict]:
    """One fact-seed row per (table, draw): the table's description and a row drawn at random
    (seeded) from its sample rows, which the fact must come from, and a cell of that row drawn
    likewise (the small prompt's seed value). Empty tables are rejects."""
    out = []
    for tid in chosen:
        info = infos[tid]
        base = {"table_id": tid, "table_name": info.name, "db_path": str(db_path)}
        for k in range(seeds_per_table):
            fid = stable_id(METHOD, "fact", tid, k)
            if not info.sample:
                out.append({"fact_id": fid, **base, **_reject("empty_table", {"table_id": tid})})
                continue
            rng = random.Random(stable_id(seed, "row", tid, k))
            i = rng.randrange(len(info.sample))
            row = " | ".join(f"{c.header}: {v}" for c, v in zip(info.columns, info.sample[i]))
            cells = sorted({normalize(v) for r in info.sample for v in r if v.strip()})[:MAX_CELLS]
            # the same row as SQL sees it (column names and cells), for the small SQL prompt
            row_cells = [[c.name, v] for c, v in zip(info.columns, info.sample[i]) if v.strip()]
            # a cell of the row drawn at random (seeded): the small fact prompt's seed value
            short = [(c.header, v.strip()) for c, v in zip(info.columns, info.sample[i])
                     if v.strip() and len(v.strip()) <= 40 and "\n" not in v]
            seed_header, seed_value = rng.choice(short) if short else ("", "")
            out.append({"fact_id": fid, **base, "table": describe(info, describe_rows), "row_number": i + 1,
                        "row": row, "row_cells": json.dumps(row_cells), "seed_header": seed_header,
                        "seed_value": seed_value, "cells": cells,
                        "columns": ", ".join(f'"{c.name}"' for c in info.columns), **_keep()})
    return out


def check_fact(row: dict, reply: dict) -> str | None:
    """The seed value is a cell of the table and the fact states it."""
    value = reply["value"].strip()
    if normalize(value) not in set(row["cells"]):
        return f"value_not_in_table: {value[:60]!r} is no cell of the table's first rows"
    if normalize(value) not in normalize(reply["fact"]):
        return "value_not_in_fact: the fact does not state its value"
    return None


def sql_hints(row_cells: list[list[str]], value: str) -> dict[str, str]:
    """For the small SQL prompt: the row as SQL sees it, the column of the row that holds the
    seed value, and another of its cells to find the row by ("" when the row lacks the value)."""
    hints = {"row_sql": ", ".join(f"`{c}` = '{_sql_escape(v)}'" for c, v in row_cells),
             "value_column": "", "key_column": "", "key_value": ""}
    v = normalize(value)
    col = next((c for c, x in row_cells if normalize(x) == v), None)
    key = next(((c, x) for c, x in row_cells if c != col and normalize(x) != v), None)
    if col and key:
        hints.update(value_column=col, key_column=key[0], key_value=_sql_escape(key[1]))
    return hints


def sql_inputs(batch: pa.Table) -> pa.Table:
    t = _outputs(batch, "fact_json")
    replies = [json.loads(x) for x in t.column("fact_json").to_pylist()]
    values = [r["value"].strip() for r in replies]
    t = t.append_column("fact", pa.array([r["fact"] for r in replies], pa.string()))
    t = t.append_column("value", pa.array(values, pa.string()))
    cells = t.column("row_cells").to_pylist() if "row_cells" in t.column_names else [None] * len(values)
    hints = [sql_hints(json.loads(c) if c else [], v) for c, v in zip(cells, values)]
    for k in ("row_sql", "value_column", "key_column", "key_value"):
        t = t.append_column(k, pa.array([h[k] for h in hints], pa.string()))
    return t


def contains_value(values: list[str], value: str) -> bool:
    """Whether an executed result holds the seed fact's value: a cell equal to it (WTQ
    normalisation, numbers as numbers) or containing it."""
    from pipelines.source2synth.match import soft_match

    v = normalize(value)
    return any(normalize(x) == v or soft_match(x, value, 0.0) for x in values)


def _sql_escape(text: str) -> str:
    """``text`` for inside an SQL string literal ('...')."""
    return text.replace("'", "''")


def _literals(sql: str) -> list[str]:
    """The SQL's string (unescaped) and number literals (a question written from it would state them)."""
    return [a.replace("''", "'") or b for a, b in re.findall(r"'((?:[^']|'')*)'|\b(\d+(?:\.\d+)?)\b", sql)]


def judge_sql(box: SqlSandbox, sql: str, value: str, *, max_values: int,
              require_seed_value: bool) -> tuple[dict, tuple[str, dict] | None]:
    """Run one SQL in the sandbox: (the answer's fields, None) or ({}, (reject reason, detail))."""
    res = box.run(sql)
    if not res.ok:
        reason = res.reason if res.reason.startswith("sql_") else f"sql_{res.reason}"
        return {}, (reason, {"sql": sql, "error": res.error, "denied": res.denied})
    values = denotation(res)
    v = normalize(value)
    if v and any(normalize(lit) == v for lit in _literals(sql)) and v in {normalize(x) for x in values}:
        return {}, ("answer_in_sql", {"sql": sql, "values": values[:20], "value": value})
    if len(values) > max_values:
        return {}, ("too_many_values", {"sql": sql, "values": values[:20]})
    if require_seed_value and not contains_value(values, value):
        return {}, ("seed_value_missing", {"sql": sql, "values": values[:20], "value": value})
    return {"values": values, "answer": ", ".join(values), "sql_seconds": round(res.elapsed_s, 4)}, None


def check_sql(row: dict, reply: dict, *, timeout_s: float, max_rows: int, max_values: int,
              require_seed_value: bool) -> str | None:
    """The SQL stage's check: the query runs in the sandbox as ``execute`` will run it, so a
    candidate that fails there is one the LLM stage can still replace (best-of, retries)."""
    with SqlSandbox(row["db_path"], timeout_s=timeout_s, max_rows=max_rows) as box:
        _, bad = judge_sql(box, reply["sql"], row["value"].strip(), max_values=max_values,
                           require_seed_value=require_seed_value)
    return None if bad is None else f"{bad[0]}: {bad[1].get('error') or bad[1].get('values')}"


def execute(batch: pa.Table, *, timeout_s: float, max_rows: int, max_values: int,
            require_seed_value: bool) -> pa.Table:
    """Run each row's SQL in the sandbox; the result becomes the answer, failures are rejects
    (``sql_error``, ``sql_empty_result``, ``sql_<other sandbox reason>``, ``seed_value_missing``, ``too_many_values``) with SQL and error."""
    t = _outputs(batch, "sql_json")
    rows = t.to_pylist()
    boxes: dict[str, SqlSandbox] = {}
    out = []
    try:
        for r in rows:
            sql = json.loads(r["sql_json"])["sql"]
            box = boxes.get(r["db_path"])
            if box is None:
                box = boxes[r["db_path"]] = SqlSandbox(r["db_path"], timeout_s=timeout_s, max_rows=max_rows)
            answer, bad = judge_sql(box, sql, r["value"], max_values=max_values, require_seed_value=require_seed_value)
            r = {**r, "sql": sql}
            out.append({**r, **_reject(*bad)} if bad else {**r, **answer, **_keep()})
    finally:
        for b in boxes.values():
            b.close()
    return rows_table(out)


def rows_table(rows: list[dict], key: str = "fact_id") -> pa.Table:
    """Rows whose keys differ (rejects lack the kept rows' fields) as one table; no rows: a
    table of ``key`` and the reject columns."""
    if not rows:
        return pa.table({key: pa.array([], pa.string()), REJECT_REASON: pa.array([], pa.string()),
                         REJECT_DETAIL: pa.array([], pa.string())})
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows])


def question_inputs(batch: pa.Table) -> pa.Table:
    return batch.drop_columns([c for c in batch.column_names if c.startswith("llm_") or c in (
        "stage", "prompt_id", "model", "seed", "attempts")])


def check_question(row: dict, reply: dict) -> str | None:
    q = reply["question"].strip()
    if not q.endswith("?"):
        return "not_a_question: the question does not end with '?'"
    if "select " in q.lower() or " from \"" in q.lower() or re.search(r"\b(sql|query|statement)\b", q, re.I):
        return "sql_in_question: the question quotes or names the SQL"
    said = normalize(q)
    missing = [lit for lit in _literals(row["sql"]) if normalize(lit) not in said]
    if missing:  # a question that leaves out the query's condition cannot be answered from the table
        return f"condition_missing: the question does not state {missing[0]!r} of the SQL's condition"
    if any(normalize(v) in said for v in row.get("values") or [] if len(normalize(v)) > 2):
        return "answer_in_question: the question states its answer"
    return None


def build_examples(batch: pa.Table) -> pa.Table:
    """Questions → table-QA examples: the answer is the executed result (its cells listed)."""
    out = []
    for r in batch.to_pylist():
        q = json.loads(r["llm_output"])["question"].strip()
        meta = {"table_id": r["table_id"], "table_name": r["table_name"], "db_path": r["db_path"],
                "seed_fact": r["fact"], "seed_value": r["value"], "values": r["values"]}
        out.append({"example_id": stable_id(METHOD, TASK, r["fact_id"], q), "method": METHOD, "task": TASK,
                    "query": q, "answer": r["answer"], "citations": [], "positives": [], "references": [],
                    "sql": r["sql"], "reasoning": f"SQL: {r['sql']} Result: {r['answer']}",
                    "meta": dumps(meta), "stage": "source2synth_tqa", "prompt_id": r["prompt_id"],
                    "model": r["model"], "seed": r["seed"], **_keep()})
    return pa.Table.from_pylist(out, schema=EXAMPLE_STAGING)


def table_description(db_path: str, table_id: str, rows: int) -> str:
    """The prompt's view of a table of a run's database."""
    return describe(load_infos(db_path)[table_id], rows)
