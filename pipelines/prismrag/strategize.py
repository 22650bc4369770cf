"""§4.3 strategized reasoning: rows and decisions for each regeneration round.

Round r (resumable stages):

    pending seeds ──strategize_r (LLM)──▶ strategy → reasoning → answer
                                          (r ≤ 6: stochastic, new seed; r > 6: revision of the
                                           previous attempt with the evaluators' analysis)
                  ──thought_eval_r──────▶ thought score 1-4 + analysis
                  ──answer_eval_r───────▶ answer score 1-4 + analysis vs the reference answer
                                          (only for thoughts scored 4 unless answer_eval_all)
                  ──round_r─────────────▶ one attempt row per seed
    failed attempts ──▶ round r+1's input (the previous attempt and its critique carried along)

On the small-model path (``evaluator: rule``) both evaluators are code
(:mod:`pipelines.prismrag.rules`) replying in the evaluators' JSON.

``select`` keeps the first attempt with both scores 4, or rejects the seed
``strategize_budget_exhausted`` with its best scores and every attempt.
"""

from __future__ import annotations

import json

import pyarrow as pa

from pipelines.core.schema import EXAMPLES, stable_id, staging
from pipelines.prismrag import rules
from pipelines.prismrag.distractor import _as_reply, _error, _rename
from pipelines.prismrag.loops import (
    best_attempt,
    first_passing,
    strategy_critique,
    strategy_passes,
)
from pipelines.prismrag.seed import SEED_COLUMNS

METHOD = "prismrag"
SCORES = ("thought_score", "answer_score")

_S = pa.string()
ATTEMPT = pa.schema([
    ("seed_id", _S), ("doc_id", _S), ("title", _S), ("chunk_ids", pa.list_(_S)), ("reference", _S),
    ("truncated", _S), ("user_time", _S), ("user_location", _S), ("question", _S), ("answer", _S),
    ("seed_prompt_id", _S), ("seed_model", _S), ("references", pa.list_(_S)),
    ("attempt", pa.int64()), ("mode", _S), ("status", _S), ("passed", pa.bool_()), ("error", _S),
    ("strategy", pa.list_(_S)), ("reasoning", pa.list_(_S)), ("candidate", _S), ("thought", _S),
    ("thought_score", pa.int64()), ("thought_analysis", _S), ("answer_score", pa.int64()), ("answer_analysis", _S),
    ("gen_prompt_id", _S), ("gen_seed", pa.int64()),
    ("prior_strategy", _S), ("prior_reasoning", _S), ("prior_answer", _S), ("critique", _S),
    ("reject_reason", _S), ("reject_detail", _S)])
INPUT = pa.schema([ATTEMPT.field(n) for n in (*SEED_COLUMNS, "references", "attempt", "mode", "prior_strategy",
                                                "prior_reasoning", "prior_answer", "critique")])


def first_round(batch: pa.Table, mode: str) -> pa.Table:
    rows = [{**{k: r.get(k) for k in SEED_COLUMNS}, "references": [r["reference"]], "attempt": 1, "mode": mode,
             "prior_strategy": None, "prior_reasoning": None, "prior_answer": None, "critique": None}
            for r in batch.to_pylist()]
    return pa.Table.from_pylist(rows, schema=INPUT)


def next_round(batch: pa.Table, mode: str) -> pa.Table:
    """Failed attempts → the next round's input; a revision sees the latest usable attempt and
    the critique of the attempt just made (§4.3 step 4)."""
    rows = []
    for r in batch.to_pylist():
        if r["passed"]:
            continue
        usable = r["candidate"] is not None
        rows.append({**{k: r.get(k) for k in SEED_COLUMNS}, "references": r["references"],
                     "attempt": r["attempt"] + 1, "mode": mode,
                     "prior_strategy": " ".join(r["strategy"]) if usable else r["prior_strategy"],
                     "prior_reasoning": " ".join(r["reasoning"]) if usable else r["prior_reasoning"],
                     "prior_answer": r["candidate"] if usable else r["prior_answer"],
                     "critique": strategy_critique(r)})
    return pa.Table.from_pylist(rows, schema=INPUT)


def check_attempt(row: dict, reply: dict) -> str | None:
    """Reject a reply that copies the prompt's JSON template instead of writing steps."""
    steps = [*reply["strategy"], *reply["reasoning"], reply["answer"]]
    if any(x.strip().rstrip(".").strip() in ("", "Step 1:", "Step 1: ...", "...") or x.strip().endswith(": ...")
           for x in steps):
        return "copied_template: a step or the answer is the prompt's placeholder"
    return None


def for_revision(batch: pa.Table) -> pa.Table:
    """A revision prompt renders every prior field: fill the ones no usable attempt gave."""
    rows = batch.to_pylist()
    for r in rows:
        for k in ("prior_strategy", "prior_reasoning", "prior_answer"):
            r[k] = r[k] or "(none)"
        r["critique"] = r["critique"] or "(none)"
    return pa.Table.from_pylist(rows, schema=batch.schema)


def generated(batch: pa.Table) -> pa.Table:
    cols: dict[str, list] = {k: [] for k in ("strategy", "reasoning", "candidate", "thought")}
    for out in batch.column("llm_output").to_pylist():
        obj = json.loads(out) if out else {}
        cols["strategy"].append(obj.get("strategy"))
        cols["reasoning"].append(obj.get("reasoning"))
        cols["candidate"].append(obj.get("answer"))
        cols["thought"].append(thought_text(obj["strategy"], obj["reasoning"]) if obj else None)
    for k, v in cols.items():
        batch = batch.append_column(k, pa.array(v, ATTEMPT.field(k).type))
    return _rename(batch, {"prompt_id": "gen_prompt_id", "seed": "gen_seed"})


def thought_text(strategy: list[str], reasoning: list[str]) -> str:
    return "Strategy: " + " ".join(strategy) + "\nReasoning: " + " ".join(reasoning)


def scored(prefix: str):
    """``then`` of an evaluator stage: ``<prefix>_score`` and ``<prefix>_analysis``."""
    def fn(batch: pa.Table) -> pa.Table:
        s, a = [], []
        for out in batch.column("llm_output").to_pylist():
            obj = json.loads(out) if out else {}
            s.append(obj.get("score"))
            a.append(obj.get("analysis"))
        return (batch.append_column(f"{prefix}_score", pa.array(s, pa.int64()))
                .append_column(f"{prefix}_analysis", pa.array(a, _S)))
    return fn


RULE_IDS = {"thought": "rule:prismrag/thought_eval@1", "answer": "rule:prismrag/answer_eval@1"}


def rule_scored(prefix: str):
    """The ``rule`` evaluator (:func:`rules.thought_eval` or :func:`rules.answer_eval`) over one
    batch, replying as the LLM evaluator would (then :func:`scored`)."""
    judge = {"thought": rules.thought_eval, "answer": rules.answer_eval}[prefix]

    def fn(batch: pa.Table) -> pa.Table:
        out = _as_reply(batch, [judge(r) for r in batch.to_pylist()], RULE_IDS[prefix], None)
        return scored(prefix)(out)
    return fn


def answer_eval_due(row: dict, pass_score: int, every: bool) -> bool:
    """§4.3 step 3: the answer is evaluated for thoughts assessed as high quality."""
    return every or (row.get("thought_score") or 0) >= pass_score


def attempts(batch: pa.Table, status: str, pass_score: int) -> pa.Table:
    """Rows of one source → attempt rows. ``status``: ``evaluated`` (both evaluators or the
    thought evaluator alone ran), ``generation_error``, ``thought_eval_error``, ``answer_eval_error``."""
    rows = []
    for r in batch.to_pylist():
        a = {f.name: r.get(f.name) for f in ATTEMPT}
        a["error"] = None
        if status == "evaluated":
            a["passed"] = strategy_passes(a["thought_score"], a["answer_score"], pass_score)
            a["status"] = ("passed" if a["passed"] else
                           "thought_below" if (a["thought_score"] or 0) < pass_score else "answer_below")
        else:
            a["status"], a["passed"], a["error"] = status, False, _error(r)
            if status == "generation_error":
                for k in ("strategy", "reasoning", "candidate", "thought"):
                    a[k] = None
            if status in ("generation_error", "thought_eval_error"):
                a["thought_score"] = a["thought_analysis"] = None
            a["answer_score"] = a["answer_analysis"] = None
        a["reject_reason"] = a["reject_detail"] = None
        rows.append(a)
    return pa.Table.from_pylist(rows, schema=ATTEMPT)


ATTEMPT_FIELDS = ("attempt", "mode", "status", "thought_score", "answer_score", "thought_analysis",
                  "answer_analysis", "strategy", "reasoning", "candidate", "error", "gen_seed", "gen_prompt_id")


def select(group: pa.Table) -> pa.Table:
    rows = group.to_pylist()
    history = [{k: a[k] for k in ATTEMPT_FIELDS} for a in sorted(rows, key=lambda a: a["attempt"])]
    base = rows[0]
    eid = stable_id(METHOD, "strategize", base["seed_id"])
    win = first_passing(rows)
    if win is None:
        best = best_attempt(rows, SCORES)
        detail = {"attempts": history, "best": {k: best[k] for k in ("attempt", "mode", *SCORES)}}
        return pa.Table.from_pylist([{"example_id": eid, "reject_reason": "strategize_budget_exhausted",
                                      "reject_detail": json.dumps(detail, ensure_ascii=False)}],
                                    schema=staging(EXAMPLES))
    meta = {"seed_id": base["seed_id"], "reference": base["reference"], "reference_texts": base["references"],
            "strategy_steps": win["strategy"], "reasoning_steps": win["reasoning"], "candidate": win["candidate"],
            "mode": win["mode"], "passed_attempt": win["attempt"], "attempts": history,
            "scores": {k: win[k] for k in SCORES}, "truncated": json.loads(base["truncated"] or "null"),
            "title": base["title"], "user_time": base["user_time"], "user_location": base["user_location"]}
    row = {"example_id": eid, "method": METHOD, "task": "strategize", "query": base["question"],
           "answer": base["answer"], "citations": [], "positives": base["chunk_ids"], "references": base["chunk_ids"],
           "strategy": "\n".join(win["strategy"]), "reasoning": "\n".join(win["reasoning"]),
           "meta": json.dumps(meta, ensure_ascii=False), "stage": "prismrag_strategize_select",
           "prompt_id": win["gen_prompt_id"], "model": base["seed_model"], "seed": win["gen_seed"],
           "reject_reason": None, "reject_detail": None}
    return pa.Table.from_pylist([row], schema=staging(EXAMPLES))
