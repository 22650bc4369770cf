"""§4.2 distractor generation with a critique loop: rows and decisions for each round.

Round r (a stage pair, resumable like any stage):

    pending seeds ──distractor_r (LLM)──▶ key facts, open question, distractor, its answer
                  ──critique_r (LLM)────▶ relevance / distraction / format 1-5 + feedback
                  ──round_r─────────────▶ one attempt row per seed: passed, or why not
    failed attempts of round r, with their distractor and feedback ──▶ round r+1's input

On the small-model path (``writer: substitute``, ``critic: rule``) code stands in for either LLM
(:mod:`pipelines.prismrag.rules`) and replies in the same JSON, so the rounds are the same.

``select`` turns every seed's attempts into a distractor-augmented example (the first passing
attempt; the references golden + distractor in a seeded random order) or a reject
``distractor_budget_exhausted`` carrying every attempt's scores.
"""

from __future__ import annotations

import json
import random

import pyarrow as pa

from actors.ner import MENTION
from pipelines.core.schema import EXAMPLES, stable_id, staging
from pipelines.prismrag import rules
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
    ("prior_distractor", pa.string()), ("prior_feedback", pa.string()), ("mentions", pa.list_(MENTION)),
    ("reject_reason", pa.string()), ("reject_detail", pa.string())])
SUBSTITUTE_ID = "rule:prismrag/substitute@3"
CRITIQUE_ID = "rule:prismrag/critique@1"


def first_round(batch: pa.Table) -> pa.Table:
    """Seeds → round 1's input (no prior attempt)."""
    rows = [{**{k: r.get(k) for k in SEED_COLUMNS}, "attempt": 1, "prior_distractor": None, "prior_feedback": None,
             "mentions": r.get("mentions")} for r in batch.to_pylist()]
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
                     "prior_feedback": distractor_feedback(r), "mentions": r.get("mentions")})
    return pa.Table.from_pylist(rows, schema=_input_schema())


def _input_schema() -> pa.Schema:
    names = [*SEED_COLUMNS, "attempt", "prior_distractor", "prior_feedback", "mentions"]
    return pa.schema([ATTEMPT.field(n) for n in names])


def check_distractor(row: dict, reply: dict) -> str | None:
    d = " ".join(reply["distractor"].split()).lower()
    if d == " ".join(row["reference"].split()).lower():
        return "distractor_copies_golden: the distractor is the golden passage unchanged"
    return None


def _as_reply(batch: pa.Table, replies: list[dict | str], prompt_id: str, seed: int | None) -> pa.Table:
    """Rule replies as an LLM stage's columns: ``llm_output`` (JSON), ``prompt_id``, ``seed``, or
    a reject (a reply that is a string is the reason, ``<reason>: <detail>``)."""
    out, reason, detail = [], [], []
    for rep in replies:
        if isinstance(rep, str):
            code, _, msg = rep.partition(": ")
            out.append(None), reason.append(code), detail.append(json.dumps({"error": msg}))
        else:
            out.append(json.dumps(rep, ensure_ascii=False)), reason.append(None), detail.append(None)
    batch = batch.drop_columns([c for c in ("llm_output", "prompt_id", "seed", "reject_reason", "reject_detail")
                                if c in batch.column_names])
    return (batch.append_column("llm_output", pa.array(out, pa.string()))
            .append_column("prompt_id", pa.array([prompt_id] * batch.num_rows, pa.string()))
            .append_column("seed", pa.array([seed] * batch.num_rows, pa.int64()))
            .append_column("reject_reason", pa.array(reason, pa.string()))
            .append_column("reject_detail", pa.array(detail, pa.string())))


def substituted(batch: pa.Table, pool: dict, max_facts: int, seed: int) -> pa.Table:
    """The ``substitute`` writer over one batch of a round's input (then :func:`generated`)."""
    replies = []
    for r in batch.to_pylist():
        rep = rules.substitute(r, pool, max_facts, seed)
        replies.append(rep if rep is not None else
                       "no_key_facts: no named entity, date or number in the passage could be changed")
    return generated(_as_reply(batch, replies, SUBSTITUTE_ID, seed))


def rule_critiqued(pass_score: int):
    """The ``rule`` critic over one batch of a round's distractors (then :func:`critiqued`)."""
    def fn(batch: pa.Table) -> pa.Table:
        replies = [rules.critique(r) for r in batch.to_pylist()]
        return critiqued(pass_score)(_as_reply(batch, replies, CRITIQUE_ID, None))
    return fn


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
