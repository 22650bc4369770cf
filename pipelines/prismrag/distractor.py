"""§4.2 distractor generation with a critique loop: rows and decisions for each round.

Round r (a stage pair, resumable like any stage):

    pending seeds ──distractor_r (LLM)──▶ key facts, open question, distractor, its answer
                  ──critique_r (LLM)────▶ relevance / distraction / format 1-5 + feedback
                  ──round_r─────────────▶ one attempt row per seed: passed, or why not
    failed attempts of round r, with their distractor and feedback ──▶ round r+1's input

``select`` turns every seed's attempts into a distractor-augmented example (the first passing
attempt; the references golden + distractor in a seeded random order) or a reject
``distractor_budget_exhausted`` carrying every attempt's scores.
"""

from __future__ import annotations

import json
import random

import pyarrow as pa

from pipelines.core.schema import EXAMPLES, stable_id, staging
from pipelines.prismrag.loops import (
    CRITIQUE_SCORES,
    best_attempt,
    critique_passes,
    distractor_feedback,
    first_passing,
)
from pipelines.prismrag.seed import SEED_COLUMNS

METHOD = "prismrag"

ATTEMPT = pa.schema([
    ("seed_id", pa.string()), ("doc_id", pa.string()), ("title", pa.string()), ("chunk_ids", pa.list_(pa.string())),
    ("reference", pa.string()), ("truncated", pa.string()), ("user_time", pa.string()),
    ("user_location", pa.string()), ("question", pa.string()), ("answer", pa.string()),
    ("seed_prompt_id", pa.string()), ("seed_model", pa.string()),
    ("attempt", pa.int64()), ("status", pa.string()), ("passed", pa.bool_()), ("error", pa.string()),
    ("key_facts", pa.list_(pa.string())), ("open_question", pa.string()), ("distractor", pa.string()),
    ("distractor_answer", pa.string()), ("reference_words", pa.int64()), ("distractor_words", pa.int64()),
    ("relevance", pa.int64()), ("distraction", pa.int64()), ("format", pa.int64()), ("feedback", pa.string()),
    ("gen_prompt_id", pa.string()), ("gen_seed", pa.int64()), ("critique_prompt_id", pa.string()),
    ("prior_distractor", pa.string()), ("prior_feedback", pa.string()),
    ("reject_reason", pa.string()), ("reject_detail", pa.string())])


def first_round(batch: pa.Table) -> pa.Table:
    """Seeds → round 1's input (no prior attempt)."""
    rows = [{**{k: r.get(k) for k in SEED_COLUMNS}, "attempt": 1, "prior_distractor": None, "prior_feedback": None}
            for r in batch.to_pylist()]
    return pa.Table.from_pylist(rows, schema=_input_schema())


def next_round(batch: pa.Table) -> pa.Table:
    """Failed attempts of a round → the next round's input, carrying the distractor and the
    critique's feedback into the prompt (§4.2 step 2: "incorporated into the ... next iteration")."""
    rows = []
    for r in batch.to_pylist():
        if r["passed"]:
            continue
        rows.append({**{k: r.get(k) for k in SEED_COLUMNS}, "attempt": r["attempt"] + 1,
                     "prior_distractor": r["distractor"] or r["prior_distractor"],
                     "prior_feedback": distractor_feedback(r)})
    return pa.Table.from_pylist(rows, schema=_input_schema())


def _input_schema() -> pa.Schema:
    names = [*SEED_COLUMNS, "attempt", "prior_distractor", "prior_feedback"]
    return pa.schema([ATTEMPT.field(n) for n in names])


def check_distractor(row: dict, reply: dict) -> str | None:
    d = " ".join(reply["distractor"].split()).lower()
    if d == " ".join(row["reference"].split()).lower():
        return "distractor_copies_golden: the distractor is the golden passage unchanged"
    return None


def generated(batch: pa.Table) -> pa.Table:
    """The generation reply as columns (``then`` of the distractor stage)."""
    cols: dict[str, list] = {k: [] for k in ("key_facts", "open_question", "distractor", "distractor_answer",
                                             "reference_words", "distractor_words")}
    for out, ref in zip(batch.column("llm_output").to_pylist(), batch.column("reference").to_pylist()):
        obj = json.loads(out) if out else {}
        cols["key_facts"].append(obj.get("key_facts"))
        cols["open_question"].append(obj.get("open_question"))
        cols["distractor"].append(obj.get("distractor"))
        cols["distractor_answer"].append(obj.get("distractor_answer"))
        cols["reference_words"].append(len((ref or "").split()))
        cols["distractor_words"].append(len(obj["distractor"].split()) if obj.get("distractor") else None)
    for k, v in cols.items():
        batch = batch.append_column(k, pa.array(v, ATTEMPT.field(k).type))
    return _rename(batch, {"prompt_id": "gen_prompt_id", "seed": "gen_seed"})


def critiqued(pass_score: int):
    """``then`` of the critique stage: the scores, the feedback and ``passed``."""
    def fn(batch: pa.Table) -> pa.Table:
        cols: dict[str, list] = {k: [] for k in (*CRITIQUE_SCORES, "feedback", "passed")}
        for out in batch.column("llm_output").to_pylist():
            obj = json.loads(out) if out else {}
            for k in CRITIQUE_SCORES:
                cols[k].append(obj.get(k))
            cols["feedback"].append(obj.get("feedback"))
            cols["passed"].append(bool(obj) and critique_passes(obj, pass_score))
        for k, v in cols.items():
            batch = batch.append_column(k, pa.array(v, ATTEMPT.field(k).type))
        return _rename(batch, {"prompt_id": "critique_prompt_id"})
    return fn


def _rename(batch: pa.Table, names: dict) -> pa.Table:
    drop = [v for v in names.values() if v in batch.column_names]
    batch = batch.drop_columns(drop)
    return batch.rename_columns([names.get(c, c) for c in batch.column_names])


def attempts(batch: pa.Table, status: str) -> pa.Table:
    """Rows of one source (critique output, or a stage's rejects) → attempt rows; ``status`` is
    ``critiqued`` (passed or failed on the scores), ``critique_error`` or ``generation_error``."""
    rows = []
    for r in batch.to_pylist():
        a = {f.name: r.get(f.name) for f in ATTEMPT}
        if status == "critiqued":
            a["status"] = "passed" if r.get("passed") else "failed_critique"
            a["passed"] = bool(r.get("passed"))
            a["error"] = None
        else:
            a["status"], a["passed"] = status, False
            a["error"] = _error(r)
            if status == "generation_error":
                for k in ("key_facts", "open_question", "distractor", "distractor_answer", "distractor_words"):
                    a[k] = None
            for k in (*CRITIQUE_SCORES, "feedback"):
                a[k] = None
        a["reject_reason"] = a["reject_detail"] = None
        rows.append(a)
    return pa.Table.from_pylist(rows, schema=ATTEMPT)


def _error(r: dict) -> str:
    detail = r.get("reject_detail")
    try:
        msg = json.loads(detail)["error"] if detail else None
    except (ValueError, KeyError, TypeError):
        msg = detail
    return f"{r.get('reject_reason')}: {msg}" if msg else str(r.get("reject_reason"))


ATTEMPT_FIELDS = ("attempt", "status", "relevance", "distraction", "format", "feedback", "open_question",
                  "distractor", "distractor_answer", "key_facts", "distractor_words", "error", "gen_seed")


def select(group: pa.Table, seed: int) -> pa.Table:
    """One seed's attempts → the distractor example (first passing attempt) or a reject."""
    rows = group.to_pylist()
    history = [{k: a[k] for k in ATTEMPT_FIELDS} for a in sorted(rows, key=lambda a: a["attempt"])]
    base = rows[0]
    win = first_passing(rows)
    if win is None:
        best = best_attempt(rows, CRITIQUE_SCORES)
        detail = {"attempts": history, "best": {k: best[k] for k in ("attempt", *CRITIQUE_SCORES)}}
        return pa.Table.from_pylist([{"example_id": stable_id(METHOD, "distractor", base["seed_id"]),
                                      "reject_reason": "distractor_budget_exhausted",
                                      "reject_detail": json.dumps(detail, ensure_ascii=False)}],
                                    schema=staging(EXAMPLES))
    golden_first = random.Random(stable_id(seed, base["seed_id"])).random() < 0.5
    meta = {"seed_id": base["seed_id"], "reference": base["reference"], "golden_position": 0 if golden_first else 1,
            "open_question": win["open_question"], "key_facts": win["key_facts"],
            "distractor_answer": win["distractor_answer"], "attempts": history, "passed_attempt": win["attempt"],
            "scores": {k: win[k] for k in CRITIQUE_SCORES}, "truncated": json.loads(base["truncated"] or "null"),
            "title": base["title"], "user_time": base["user_time"], "user_location": base["user_location"]}
    row = {"example_id": stable_id(METHOD, "distractor", base["seed_id"]), "method": METHOD, "task": "distractor",
           "query": base["question"], "answer": base["answer"], "citations": [], "positives": base["chunk_ids"],
           "references": base["chunk_ids"], "distractors": [win["distractor"]],
           "meta": json.dumps(meta, ensure_ascii=False), "stage": "prismrag_distractor_select",
           "prompt_id": win["gen_prompt_id"], "model": base["seed_model"], "seed": win["gen_seed"],
           "reject_reason": None, "reject_detail": None}
    return pa.Table.from_pylist([row], schema=staging(EXAMPLES))
