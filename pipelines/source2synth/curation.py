"""Source2Synth curation (paper §2.2, "Dataset Curation"): split, fine-tune, filter, impute.

    generated examples ──seeded split per task (slice_fraction 0.5: "two slices of equal size")
    slice 0 ──SFT chat records──▶ LLMSynth = the embedded model + LoRA (training/sft.py)
    slice 1 ──LLMSynth answers each question up to k = 3 times ("Data filtering": an example whose
              answer LLMSynth cannot predict in k tries is low quality)
            ──kept when a try matches (:mod:`pipelines.source2synth.match`: soft match for text,
              numeric tolerance, executed-SQL denotation for tables)
            ──"Data imputation": reasoning that is missing (or, with ``impute: always``, all of it,
              the paper's blank-and-refill) is LLMSynth's, marked ``imputed``
    ──▶ the curated set (slice 1 kept; slice 0 too with ``keep_slice0``)

A try is one generation; a try that does not match is what the LLM actor's check rejects, and the
actor retries it with the next seed at ``retry_temperature`` (``llm.max_retries = k - 1``), so
``attempts`` is the try that matched. The answer prompts are the SFT records' prompts, so LLMSynth
answers in the format it was trained on.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

import pyarrow as pa

import prompts as prompt_files
from pipelines.core.schema import EXAMPLES, stable_id
from pipelines.source2synth.match import denotation_match, soft_match

GENERATED = pa.schema([*EXAMPLES, pa.field("slice", pa.int32())])
PROMPTS = {"multi_hop": "source2synth/answer_passages", "table_qa": "source2synth/answer_table"}


# ----------------------------------------------------------------------------- split
def split_slices(ids_by_task: dict[str, list[str]], fraction: float, seed: int) -> dict[str, int]:
    """example_id → slice (0 or 1): per task, a seeded order, the first ``ceil(n * fraction)``
    in slice 0. The same ids and seed always give the same split."""
    out = {}
    for task in sorted(ids_by_task):
        order = sorted(set(ids_by_task[task]), key=lambda i: (stable_id(seed, "slice", i), i))
        n0 = math.ceil(len(order) * fraction)
        out.update({i: (0 if k < n0 else 1) for k, i in enumerate(order)})
    return out


# ----------------------------------------------------------------------------- prompts + records
def prompt_variables(ex: dict, table_rows: int = 5) -> dict:
    """What the task's answer prompt renders: the passages, or the table, and the question."""
    meta = json.loads(ex["meta"] or "{}")
    table = ""
    if ex["task"] == "table_qa":
        from pipelines.source2synth.tableqa import table_description

        table = table_description(meta["db_path"], meta["table_id"], table_rows)
    return {"passages": meta.get("passages") or [], "table": table, "question": ex["query"]}


def target_reply(ex: dict) -> dict:
    """The assistant turn an example teaches: reasoning (the SQL for tables), then the answer."""
    if ex["task"] == "table_qa":
        return {"sql": ex["sql"] or "", "answer": ex["answer"]}
    return {"reasoning": ex["reasoning"] or "", "answer": ex["answer"]}


def chat_record(ex: dict, *, prompt_search=None, table_rows: int = 5) -> dict:
    """An SFT chat record (``training/chat_data.py`` reads it): the answer prompt's messages,
    then the target reply as the assistant turn."""
    prompt = prompt_files.load(PROMPTS[ex["task"]], search=prompt_search)
    msgs = prompt.messages(prompt_variables(ex, table_rows))
    msgs.append({"role": "assistant", "content": json.dumps(target_reply(ex), ensure_ascii=False)})
    return {"id": ex["example_id"], "task": ex["task"], "messages": msgs}


def answer_rows(batch: pa.Table, *, tolerance: float, table_rows: int) -> pa.Table:
    """Slice-1 examples → rows for LLMSynth's answer prompts (``prompt`` selects the task's)."""
    rows = []
    for ex in batch.to_pylist():
        meta = json.loads(ex["meta"] or "{}")
        v = prompt_variables(ex, table_rows)
        rows.append({"example_id": ex["example_id"], "task": ex["task"], "prompt": PROMPTS[ex["task"]],
                     "passages": v["passages"], "table": v["table"], "question": v["question"],
                     "answer": ex["answer"], "targets": meta.get("values") or [ex["answer"]],
                     "db_path": meta.get("db_path") or "", "tolerance": tolerance})
    return pa.Table.from_pylist(rows) if rows else pa.table({"example_id": pa.array([], pa.string())})


# ----------------------------------------------------------------------------- filtering
def executed_values(db_path: str, sql: str) -> list[str] | None:
    """The denotation of ``sql`` on a run's database in the sandbox, None if it fails."""
    from pipelines.source2synth.sandbox import SqlSandbox, denotation

    if not sql or not db_path:
        return None
    with SqlSandbox(db_path, timeout_s=2.0, max_rows=200) as box:
        res = box.run(sql)
    return denotation(res) if res.ok else None


def answer_matches(row: dict, reply: dict) -> tuple[bool, str]:
    """(matched, how): text by :func:`soft_match`; tables by the executed SQL's denotation, the
    answer's denotation, or a soft match of the answer."""
    pred = reply.get("answer") or ""
    if row["task"] == "table_qa":
        values = executed_values(row["db_path"], reply.get("sql") or "")
        if values is not None and denotation_match(values, row["targets"]):
            return True, "executed_sql"
        if denotation_match([pred], row["targets"]) or denotation_match(
                [p.strip() for p in pred.split(",")], row["targets"]):
            return True, "denotation"
    if soft_match(pred, row["answer"], row["tolerance"]):
        return True, "soft_match"
    return False, ""


def check_answer(row: dict, reply: dict) -> str | None:
    """The LLM actor's check for one try: None keeps the reply; ``no_match`` makes it retry."""
    ok, _ = answer_matches(row, reply)
    if ok:
        return None
    return f"no_match: {str(reply.get('answer'))[:80]!r} does not answer {str(row['answer'])[:80]!r}"


def impute(ex: dict, reply: dict | None, mode: str) -> tuple[dict, bool]:
    """The example with LLMSynth's reasoning filled in (``missing``: only where it has none;
    ``always``: replaced; ``off``: unchanged). A table example's SQL is only taken from a reply
    whose SQL executes to the example's answer."""
    if reply is None or mode == "off":
        return ex, False
    ex = dict(ex)
    if ex["task"] == "table_qa":
        meta = json.loads(ex["meta"] or "{}")
        sql = reply.get("sql") or ""
        if not (mode == "always" or not ex.get("sql")) or not sql:
            return ex, False
        values = executed_values(meta.get("db_path", ""), sql)
        if values is None or not denotation_match(values, meta.get("values") or [ex["answer"]]):
            return ex, False
        ex["sql"], ex["reasoning"] = sql, f"SQL: {sql} Result: {ex['answer']}"
        return ex, True
    reasoning = (reply.get("reasoning") or "").strip()
    if not reasoning or not (mode == "always" or not (ex.get("reasoning") or "").strip()):
        return ex, False
    ex["reasoning"] = reasoning
    return ex, True


def retention(generated: list[dict], kept_slice1: set[str], imputed: set[str], trained: bool) -> dict:
    """Per slice and task: how many examples, and for slice 1 how many LLMSynth kept."""
    by: dict[tuple[int, str], list[str]] = defaultdict(list)
    for r in generated:
        by[(r["slice"], r["task"])].append(r["example_id"])
    out: dict = {"llmsynth_trained": trained, "slice_0": {}, "slice_1": {}, "imputed": len(imputed)}
    for (s, task), ids in sorted(by.items()):
        if s == 0:
            out["slice_0"][task] = {"examples": len(ids)}
        else:
            kept = sum(1 for i in ids if i in kept_slice1)
            out["slice_1"][task] = {"examples": len(ids), "kept": kept, "retention": round(kept / len(ids), 4)}
    return out
