"""PrismRAG's small-model path (pipelines/prismrag/rules.py): the substitute writer on spaCy's
real mentions, the rule critic, the rule evaluators and the rule factuality judge, and how they
plug into the loop's rounds (same JSON as the LLM prompts they stand in for)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from actors.ner import NER
from pipelines.eval.factuality import rule_judge
from pipelines.prismrag import distractor as dist
from pipelines.prismrag import rules
from pipelines.prismrag import strategize as st
from pipelines.prismrag.config import PrismragConfig
from pipelines.prismrag.seed import check_seed

REFERENCE = ("The Eiffel Tower was designed by Gustave Eiffel's company and opened in Paris in 1889. "
             "It was the tallest structure in the world for 41 years.")
POOL_TEXTS = ["Berlin hosted the Olympic Games in 1936, when Jesse Owens won four medals.",
              "Marie Curie worked in Warsaw and later moved to London for a conference in 1911.",
              "The Golden Gate Bridge opened in San Francisco in 1937."]


@pytest.fixture(scope="module")
def ner():
    return NER()


@pytest.fixture(scope="module")
def seed(ner):
    return {"seed_id": "s1", "attempt": 1, "reference": REFERENCE, "question": "Where did the Eiffel Tower open?",
            "answer": "Paris", "mentions": ner.mentions([REFERENCE])[0]}


@pytest.fixture(scope="module")
def pool(ner):
    return rules.entity_pool(ner.mentions(POOL_TEXTS), per_label=50, seed=0)


def test_substitute_changes_the_answer_fact_first_everywhere_and_passes_the_rule_critic(seed, pool):
    rep = rules.substitute(seed, pool, max_facts=5, seed=0)
    assert rep["key_facts"][0] == "Paris"  # the answer's fact comes first
    assert "Paris" not in rep["distractor"] and rep["distractor_answer"] != "Paris"
    assert rep["distractor_answer"] in rep["distractor"]  # the distractor states its own answer
    assert rep["distractor_answer"] in pool["GPE"]
    assert rep["open_question"] == seed["question"]
    assert "tallest structure in the world" in rep["distractor"]  # same topic, same layout
    c = rules.critique({**seed, **rep})
    assert min(c["relevance"], c["distraction"], c["format"]) >= 4, c
    other = rules.substitute({**seed, "attempt": 2}, pool, max_facts=5, seed=0)
    assert other["distractor"] != rep["distractor"] or len(pool["GPE"]) == 1  # a new draw per attempt


def test_numbers_and_dates_are_shifted_keeping_their_form(seed):
    row = {**seed, "answer": "1889", "question": "When did the Eiffel Tower open?"}
    rep = rules.substitute(row, {}, max_facts=3, seed=1)
    assert rep is not None and "1889" not in rep["distractor"]
    assert rep["distractor_answer"].isdigit() and rep["distractor_answer"] != "1889"


def test_rule_critic_fails_a_distractor_that_keeps_the_answer_or_changes_the_length(seed):
    kept = {**seed, "key_facts": ["Paris"], "distractor": REFERENCE.replace("1889", "1890"),
            "distractor_answer": "Paris"}
    c = rules.critique(kept)
    assert c["distraction"] == 1 and "answer must change" in c["feedback"]
    short = {**seed, "key_facts": ["Paris"], "distractor": "The tower opened in Rome.", "distractor_answer": "Rome"}
    c = rules.critique(short)
    assert c["format"] < 4 and c["relevance"] < 4 and "length" in c["feedback"]


def test_no_fact_to_change_is_a_generation_reject_and_the_round_goes_on(seed):
    batch = dist.first_round(pa.Table.from_pylist([{**seed, "seed_id": "s0", "mentions": []}, seed]))
    out = dist.substituted(batch, {"GPE": ["Berlin"]}, max_facts=5, seed=0).to_pylist()
    assert out[0]["reject_reason"] == "no_key_facts" and out[0]["distractor"] is None
    assert out[1]["reject_reason"] is None and "Berlin" in out[1]["distractor"]
    assert out[1]["gen_prompt_id"] == dist.SUBSTITUTE_ID
    crit = dist.rule_critiqued(4)(pa.Table.from_pylist([out[1]]))
    rows = dist.attempts(crit, "critiqued").to_pylist()
    assert rows[0]["passed"] and rows[0]["critique_prompt_id"] == dist.CRITIQUE_ID
    failed = dist.attempts(pa.Table.from_pylist([out[0]]), "generation_error").to_pylist()
    assert failed[0]["error"].startswith("no_key_facts") and not failed[0]["passed"]
    nxt = dist.next_round(pa.Table.from_pylist(failed, schema=dist.ATTEMPT)).to_pylist()
    assert nxt[0]["attempt"] == 2 and nxt[0]["mentions"] == []  # carried to the next round


def test_rule_evaluators_score_grounding_and_the_answer():
    row = {"references": [REFERENCE], "question": "Where did the Eiffel Tower open?", "answer": "Paris",
           "strategy": ["Find where the tower opened."], "reasoning": ["The Eiffel Tower opened in Paris in 1889."],
           "candidate": "Paris"}
    assert rules.thought_eval(row)["score"] == 4
    made_up = {**row, "reasoning": ["Napoleon ordered bronze statues for Lyon harbour."], "candidate": "Lyon"}
    t = rules.thought_eval(made_up)
    assert t["score"] == 1 and "napoleon" in t["analysis"]
    assert rules.answer_eval(row)["score"] == 4
    assert rules.answer_eval({**row, "candidate": "It opened in Paris, France."})["score"] == 4
    assert rules.answer_eval({**row, "candidate": "Lyon"})["score"] == 2
    assert rules.answer_eval({**row, "candidate": "I don't know"})["score"] == 1
    assert rules.answer_eval({**row, "answer": "Gustave Eiffel", "candidate": "Eiffel"})["score"] == 3
    scored = st.rule_scored("thought")(pa.Table.from_pylist([row])).to_pylist()[0]
    assert scored["thought_score"] == 4 and json.loads(scored["llm_output"])["score"] == 4


def test_auto_picks_the_rules_for_the_small_model_only():
    small = PrismragConfig().resolved(small=True)
    assert (small.distractor.writer, small.distractor.critic, small.strategize.evaluator) == ("substitute", "rule",
                                                                                              "rule")
    big = PrismragConfig().resolved(small=False)
    assert (big.distractor.writer, big.distractor.critic, big.strategize.evaluator) == ("llm", "llm", "llm")
    mixed = PrismragConfig.model_validate({"distractor": {"critic": "llm"}}).resolved(small=True)
    assert (mixed.distractor.writer, mixed.distractor.critic) == ("substitute", "llm")


def test_seed_answer_must_come_from_the_reference():
    row = {"reference": REFERENCE}
    assert check_seed(row, {"question": "Where did it open?", "answer": "Paris"}) is None
    assert check_seed(row, {"question": "Where did it open?", "answer": "Madrid"}).startswith("answer_not_in_reference")
    assert check_seed(row, {"question": "Who designed it?", "answer": "Gustave Eiffel"}) is None
    assert check_seed(row, {"question": "Who designed it?", "answer": "Jean Marc Eiffel"}).startswith("answer_not")


def test_rule_judge_accepts_the_ground_truth_inside_the_answer_or_half_of_it():
    assert rule_judge("It was Tulsa, Oklahoma.", ["Tulsa, Oklahoma"]) == "accurate"
    assert rule_judge("Tulsa", ["Tulsa, Oklahoma"]) == "accurate"
    assert rule_judge("Tinted Windows", ["Tulsa"]) == "hallucinated"
    assert rule_judge("Oklahoma City", ["Tulsa, Oklahoma"]) == "hallucinated"
    assert rule_judge("1998", ["1989", "in 1989"]) == "hallucinated"


def test_a_name_and_its_short_form_change_together_to_a_name_of_as_many_words():
    text = "Justin Gimelstob and Richey Reneberg were the champions, but Gimelstob did not play. Reneberg won."
    mentions = [{"text": t, "label": "PERSON", "start": 0, "end": 0}
                for t in ("Justin Gimelstob", "Richey Reneberg", "Gimelstob", "Reneberg")]
    row = {"seed_id": "s", "attempt": 1, "reference": text, "question": "Who won?", "answer": "Richey Reneberg",
           "mentions": mentions}
    pool = {"PERSON": ["Ann Lee", "Bo Ma", "Cher", "Dee Dee Ramone"]}
    rep = rules.substitute(row, pool, max_facts=3, seed=0)  # "Gimelstob" rides along past the limit
    assert rep["key_facts"][0] == "Richey Reneberg" and set(rep["key_facts"]) == {m["text"] for m in mentions}
    first, second = rep["distractor_answer"].split()
    assert rep["distractor_answer"] in ("Ann Lee", "Bo Ma")
    assert rep["distractor"].endswith(f"{second} won.") and "Gimelstob" not in rep["distractor"]
    assert "Cher" not in rep["distractor"] and "Dee Dee" not in rep["distractor"]
