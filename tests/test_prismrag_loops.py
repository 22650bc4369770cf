"""PrismRAG's two loops driven by scripted replies (no model): the round functions the pipeline's
stages run (pipelines/prismrag/distractor.py, strategize.py), round after round, with the
stopping rules of pipelines/prismrag/loops.py."""

from __future__ import annotations

import json

import pyarrow as pa

import prompts
from pipelines.prismrag import distractor as dist
from pipelines.prismrag import strategize as st
from pipelines.prismrag.config import PrismragConfig
from pipelines.prismrag.loops import next_round_needed, strategy_mode

SEED = {"seed_id": "s1", "doc_id": "d1", "title": "Pump", "chunk_ids": ["c1"],
        "reference": "The Tidewater P-200 pump was built in Gdansk in 1998. It moves 40 litres a minute.",
        "truncated": None, "user_time": None, "user_location": None, "question": "Where was the P-200 built?",
        "answer": "In Gdansk.", "seed_prompt_id": "prismrag/seed_qa@1", "seed_model": "scripted"}
GEN = {"key_facts": ["Gdansk", "1998"], "open_question": "Where was the pump built?",
       "distractor": "The Tidewater P-300 pump was built in Szczecin in 2003. It moves 40 litres a minute.",
       "distractor_answer": "In Szczecin."}


def _llm(batch: pa.Table, replies: list, prompt_id: str, seed: int) -> pa.Table:
    """What the LLM actor adds to a batch, with scripted replies (None = a rejected reply)."""
    n = batch.num_rows
    cols = {"llm_output": [json.dumps(r) if r is not None else None for r in replies], "prompt_id": [prompt_id] * n,
            "seed": [seed] * n, "model": ["scripted"] * n,
            "reject_reason": [None if r is not None else "schema_violation" for r in replies],
            "reject_detail": [None if r is not None else json.dumps({"error": "schema: bad"}) for r in replies]}
    for k, v in cols.items():  # like the actor: replaces the columns a previous stage added
        if k in batch.column_names:
            batch = batch.drop_columns([k])
        batch = batch.append_column(k, pa.array(v, pa.int64() if k == "seed" else pa.string()))
    return batch


def run_distractor(critiques: list[dict | None], max_attempts: int = 5, pass_score: int = 4):
    """Drive the critique loop with one scripted critique per attempt; returns (attempts, inputs, result)."""
    inputs, attempts = [], []
    batch = dist.first_round(pa.Table.from_pylist([SEED]))
    for r in range(1, max_attempts + 1):
        inputs.append(batch.to_pylist()[0])
        gen = dist.generated(_llm(batch, [GEN], "prismrag/distractor@1", 100 * r))
        crit = critiques[r - 1]
        if crit is None:  # the critique reply could not be used: the row is in rejects/critique_r
            out = dist.attempts(dist.critiqued(pass_score)(_llm(gen, [None], "c", 0)), "critique_error")
        else:
            out = dist.attempts(dist.critiqued(pass_score)(_llm(gen, [crit], "prismrag/distractor_critique@1", 0)),
                                "critiqued")
        attempts += out.to_pylist()
        failing = sum(not a["passed"] for a in out.to_pylist())
        if not next_round_needed(r, max_attempts, failing):
            break
        batch = dist.next_round(out)
    result = dist.select(pa.Table.from_pylist(attempts, schema=dist.ATTEMPT), seed=0).to_pylist()[0]
    return attempts, inputs, result


def crit(rel, dis, fmt, feedback="fine"):
    return {"feedback": feedback, "relevance": rel, "distraction": dis, "format": fmt}


def test_critique_loop_stops_at_the_first_attempt_with_every_score_at_least_4():
    attempts, _, result = run_distractor([crit(5, 3, 5), crit(4, 4, 4), crit(5, 5, 5)])
    assert [a["attempt"] for a in attempts] == [1, 2]  # stopped after the first pass
    assert [a["status"] for a in attempts] == ["failed_critique", "passed"]
    assert result["reject_reason"] is None and result["task"] == "distractor"
    meta = json.loads(result["meta"])
    assert meta["passed_attempt"] == 2 and meta["scores"] == {"relevance": 4, "distraction": 4, "format": 4}
    assert [h["distraction"] for h in meta["attempts"]] == [3, 4]  # every attempt kept with its scores
    assert result["distractors"] == [GEN["distractor"]] and meta["golden_position"] in (0, 1)


def test_critique_loop_budget_exhausted_is_a_reject_with_every_attempt():
    attempts, _, result = run_distractor([crit(3, 3, 3), None, crit(5, 5, 3), crit(4, 3, 4), crit(2, 2, 2)])
    assert len(attempts) == 5
    assert result["reject_reason"] == "distractor_budget_exhausted"
    detail = json.loads(result["reject_detail"])
    assert [a["status"] for a in detail["attempts"]] == ["failed_critique", "critique_error", "failed_critique",
                                                         "failed_critique", "failed_critique"]
    assert detail["best"]["attempt"] == 3  # the highest summed scores
    # a configurable budget and bar
    attempts, _, result = run_distractor([crit(3, 3, 3), crit(3, 3, 3)], max_attempts=2, pass_score=3)
    assert len(attempts) == 1 and result["reject_reason"] is None


def test_critique_feedback_goes_into_the_next_generation_prompt():
    _, inputs, _ = run_distractor([crit(2, 5, 5, "Change the city, not the pump."), crit(5, 5, 5)])
    assert inputs[0]["prior_feedback"] is None
    nxt = inputs[1]
    assert nxt["attempt"] == 2 and "Change the city, not the pump." in nxt["prior_feedback"]
    assert "relevance 2/5" in nxt["prior_feedback"] and nxt["prior_distractor"] == GEN["distractor"]
    text = prompts.load("prismrag/distractor").messages(nxt)[-1]["content"]
    assert "Change the city, not the pump." in text and GEN["distractor"] in text
    first = prompts.load("prismrag/distractor").messages(inputs[0])[-1]["content"]
    assert "previous distractor" not in first


def test_user_context_reaches_the_prompts_only_when_given():
    row = {**dist.first_round(pa.Table.from_pylist([SEED])).to_pylist()[0]}
    assert "User time" not in prompts.load("prismrag/seed_qa").messages(row)[-1]["content"]
    row.update(user_time="4pm, Thursday, January 9, 2025", user_location="Seattle")
    for name in ("seed_qa", "distractor"):
        text = prompts.load(f"prismrag/{name}").messages(row)[-1]["content"]
        assert "January 9, 2025" in text and "Seattle" in text


STRAT = {"strategy": ["Find the pump", "Read where it was built"], "reasoning": ["It is the P-200", "Gdansk"],
         "answer": "Gdansk"}


def run_strategize(scores: list[tuple[int | None, int | None]], budget: int = 10, stochastic: int = 6,
                   pass_score: int = 4, every: bool = False):
    """Drive the regeneration loop with scripted (thought, answer) scores per attempt."""
    inputs, attempts = [], []
    batch = st.first_round(pa.Table.from_pylist([SEED]), mode=strategy_mode(1, stochastic))
    for r in range(1, budget + 1):
        row_in = batch.to_pylist()[0]
        inputs.append(row_in)
        gen = st.generated(_llm(batch, [STRAT], f"prismrag/{'strategize' if row_in['mode'] == 'stochastic' else 'revise'}@1",
                                100 * r))
        t, a = scores[r - 1]
        te = st.scored("thought")(_llm(gen, [{"analysis": f"thought {r}", "score": t}], "te", 0))
        te_row = te.to_pylist()[0]
        if st.answer_eval_due(te_row, pass_score, every):
            ae = st.scored("answer")(_llm(te, [{"analysis": f"answer {r}", "score": a}], "ae", 0))
            out = st.attempts(ae, "evaluated", pass_score)
        else:
            out = st.attempts(te, "evaluated", pass_score)
        attempts += out.to_pylist()
        if not next_round_needed(r, budget, sum(not x["passed"] for x in out.to_pylist())):
            break
        batch = st.next_round(out, mode=strategy_mode(r + 1, stochastic))
    return attempts, inputs, st.select(pa.Table.from_pylist(attempts, schema=st.ATTEMPT)).to_pylist()[0]


def test_regeneration_is_stochastic_for_6_attempts_then_revision_and_keeps_the_first_double_4():
    cfg = PrismragConfig().strategize
    assert (cfg.budget, cfg.stochastic_attempts, cfg.pass_score) == (10, 6, 4)  # the paper's
    scores = [(3, None)] * 6 + [(4, 3), (4, 4), (4, 4), (4, 4)]
    attempts, inputs, result = run_strategize(scores)
    assert [i["mode"] for i in inputs] == ["stochastic"] * 6 + ["revision"] * 2
    assert len(attempts) == 8 and result["reject_reason"] is None
    meta = json.loads(result["meta"])
    assert meta["passed_attempt"] == 8 and meta["mode"] == "revision"
    assert [a["status"] for a in meta["attempts"]][:7] == ["thought_below"] * 6 + ["answer_below"]
    # the answer evaluator ran only for thoughts scored 4 (§4.3 step 3)
    assert [a["answer_score"] for a in meta["attempts"]] == [None] * 6 + [3, 4]
    assert result["strategy"] == "Find the pump\nRead where it was built"


def test_revision_prompt_shows_the_previous_attempt_and_the_evaluators_analysis():
    _, inputs, _ = run_strategize([(3, None), (4, 2), (4, 4)], stochastic=1)
    rev = inputs[1]
    assert rev["mode"] == "revision" and rev["prior_answer"] == "Gdansk"
    assert "thought 1" in rev["critique"]
    assert "answer 2" in inputs[2]["critique"] and "Answer score 2/4" in inputs[2]["critique"]
    text = prompts.load("prismrag/revise").messages(st.for_revision(pa.Table.from_pylist([rev])).to_pylist()[0])
    assert "thought 1" in text[-1]["content"] and "It is the P-200" in text[-1]["content"]


def test_regeneration_budget_exhausted_is_a_reject_with_its_best_scores():
    attempts, _, result = run_strategize([(2, None), (4, 3), (3, None)], budget=3)
    assert len(attempts) == 3 and result["reject_reason"] == "strategize_budget_exhausted"
    detail = json.loads(result["reject_detail"])
    assert detail["best"] == {"attempt": 2, "mode": "stochastic", "thought_score": 4, "answer_score": 3}
    assert len(detail["attempts"]) == 3


def test_a_reply_that_copies_the_json_template_is_rejected():
    assert st.check_attempt({}, {"strategy": ["Step 1: ..."], "reasoning": ["x y z"], "answer": "a"}).startswith(
        "copied_template")
    assert st.check_attempt({}, STRAT) is None
