"""RAGSynth single-hop: citation resolution (M2 ∘ M1), checks, and the pipeline end to end."""

from __future__ import annotations

import json

import pyarrow as pa

from pipelines.ragsynth.config import RagsynthConfig
from pipelines.ragsynth.singlehop import (
    check_clues,
    check_qa,
    check_question,
    clue_records,
    question_inputs,
    resolve,
    sentence_clues,
    support,
)

ROW = {
    "chunk_id": "manual.md#c0", "doc_id": "manual.md",
    "sentence_ids": ["manual.md#c0:s0", "manual.md#c0:s1", "manual.md#c0:s2"],
    "sentences": ["The pump must be primed before first use.",
                  "Never run the pump dry.",
                  "Without water the seal overheats within 30 seconds."],
    "min_support": 0.5,
}
CLUES = [{"fact": "The pump must be primed before its first use.", "sentences": [0]},
         {"fact": "Running dry makes the seal overheat within 30 seconds.", "sentences": [1, 2]}]
LINEAGE = {"stage": "ragsynth_cite", "prompt_id": "ragsynth/qa@1", "model": "m", "seed": 0}


def _clue_records():
    """The clue stage's reply for ROW (1-based sentence numbers) as clue records."""
    reply = {"clues": [{"fact": c["fact"], "sentences": [i + 1 for i in c["sentences"]]} for c in CLUES]}
    return clue_records({**ROW, "llm_output": json.dumps(reply)})


def _qa_row(answer, question="Why must the pump never run dry?"):
    clues = _clue_records()
    return {**ROW, "clue_json": json.dumps(clues), "clues": [c["text"] for c in clues],
            "llm_output": json.dumps({"question": question, "answer": answer})}


def test_clue_records_resolve_sentence_numbers():
    clues = _clue_records()
    assert [c["clue_id"] for c in clues] == ["manual.md#c0/k0", "manual.md#c0/k1"]
    assert clues[1]["sentence_ids"] == ["manual.md#c0:s1", "manual.md#c0:s2"]
    assert clues[1]["sentences"] == ROW["sentences"][1:] and clues[0]["doc_id"] == "manual.md"


def test_citations_compose_answer_to_clue_to_sentence():
    res = resolve(_qa_row([{"sentence": "Without water the seal overheats within 30 seconds.", "facts": [2]}]),
                  0.5, LINEAGE)
    ex = res["example"]
    assert ex["citations"] == [{"chunk_id": "manual.md#c0", "sentence_id": "manual.md#c0:s1"},
                               {"chunk_id": "manual.md#c0", "sentence_id": "manual.md#c0:s2"}]
    assert ex["positives"] == ["manual.md#c0"] and ex["hop"] == 1
    assert ex["answer_source"] == "model"  # the LLM wrote the single-hop answer
    assert ex["clues"][1]["sentence_ids"] == ["manual.md#c0:s1", "manual.md#c0:s2"]
    assert ex["rubric"] == [{"kind": "cover", "text": "Without water the seal overheats within 30 seconds."}]
    assert json.loads(ex["meta"])["answer_sentences"][0]["sentence_ids"] == ["manual.md#c0:s1", "manual.md#c0:s2"]
    assert ex["example_id"] == resolve(_qa_row([{"sentence": "Without water the seal overheats within 30 seconds.",
                                                "facts": [2]}]), 0.5, LINEAGE)["example"]["example_id"]


def test_unsupported_answers_are_rejected_with_reason():
    res = resolve(_qa_row([{"sentence": "The warranty lasts five years in Europe.", "facts": [1]}]), 0.5, LINEAGE)
    assert res["reason"] == "unsupported_answer"
    assert res["detail"]["support"] < 0.5


def test_checks_catch_out_of_range_and_unsupported_clues():
    one_based = [{"fact": c["fact"], "sentences": [i + 1 for i in c["sentences"]]} for c in CLUES]
    assert check_clues(ROW, {"clues": one_based}) is None
    for bad in (0, 4):
        assert check_clues(ROW, {"clues": [{"fact": "The pump is primed.", "sentences": [bad]}]}).startswith(
            "citation_out_of_range")
    assert check_clues(ROW, {"clues": [{"fact": "Bananas are yellow fruit.", "sentences": [1]}]}).startswith(
        "unsupported_clue")
    row = {**ROW, "clues": [c["fact"] for c in CLUES]}
    ok = {"question": "When must the pump be primed?", "answer": [{"sentence": "Before first use.", "facts": [1]}]}
    assert check_qa(row, ok) is None
    assert check_qa(row, {"question": "Why?", "answer": [{"sentence": "x", "facts": [3]}]}).startswith(
        "citation_out_of_range")
    assert check_qa(row, {"question": "The pump is primed.", "answer": [{"sentence": "x", "facts": [1]}]}).startswith(
        "not_a_question")
    assert check_qa(row, {"question": "What is the state of research?",
                          "answer": [{"sentence": "x", "facts": [1]}]}).startswith("question_off_topic")
    assert support("seal overheats", ["the seal overheats quickly"]) == 1.0


def test_sentence_clues_take_sentences_that_stand_alone_and_reject_chunks_without_one():
    """``clues: sentences``: headings, list labels, short lines and sentences leaning on an
    earlier one ("She ...") are no clues; each clue cites exactly its own sentence."""
    sents = ["## Maintenance", "She studied mechanical engineering in Gdansk for five years.",
             "Clean the inlet strainer every 50 operating hours of the pump.", "Parts:",
             "Replace the mechanical seal every 2,000 hours or when water drips from the drain hole.",
             "The seal kit has the part number HS-2040 and ships with two rings."]
    rows = [{"chunk_id": "c1", "doc_id": "d", "sentence_ids": [f"c1:s{i}" for i in range(len(sents))],
             "sentences": sents},
            {"chunk_id": "c2", "doc_id": "d", "sentence_ids": ["c2:s0"], "sentences": ["| a | b |"]},
            {"chunk_id": "c3", "doc_id": "d", "sentence_ids": ["c3:s0"], "sentences": [sents[1]]}]
    out = sentence_clues(pa.Table.from_pylist(rows), max_clues=2, min_words=5).to_pylist()
    assert out[1]["reject_reason"] == "no_clue_sentence" and out[1]["llm_output"] is None
    assert [c["text"] for c in clue_records(out[2])] == [sents[1]]  # no better sentence: a leaning one
    assert out[0]["reject_reason"] is None
    clues = clue_records(out[0])
    assert [c["text"] for c in clues] == [sents[2], sents[4]]  # the first two that stand alone
    assert [c["sentence_ids"] for c in clues] == [["c1:s2"], ["c1:s4"]] and clues[0]["sentences"] == [sents[2]]


def test_question_checks_refuse_what_a_small_model_writes_instead_of_a_question():
    fact = "Drip irrigation delivers water directly to the roots of plants through small emitters."
    row = {"fact": fact}
    assert check_question(row, {"question": "How does drip irrigation deliver water to plants?"}) is None
    for q, reason in [("Drip irrigation saves water.", "not_a_question"),
                      ("What is the answer to this question?", "generic_question"),
                      ("What is a pump made of?", "question_off_topic"),  # one word shared, two needed
                      ("What is the water of the water of the roots of plants?", "repetitive"),
                      ("What does drip irrigation delivers water directly to the roots of plants through small "
                       "emitters?", "copied_fact")]:
        assert check_question(row, {"question": q}).startswith(reason), q


def test_facts_mode_the_clue_is_the_answer_and_cites_its_sentences():
    """``single_hop_answer: facts``: the LLM's question is answered by the chunk's first clue,
    verbatim; its citations are that clue's sentences, and the example says who wrote it."""
    reply = {"clues": [{"fact": c["fact"], "sentences": [i + 1 for i in c["sentences"]]} for c in CLUES]}
    (row,) = question_inputs(pa.Table.from_pylist([{**ROW, "llm_output": json.dumps(reply)}])).to_pylist()
    assert row["fact"] == CLUES[0]["fact"]
    row["llm_output"] = json.dumps({"question": "When must the pump be primed?"})
    ex = resolve(row, 0.5, LINEAGE)["example"]
    assert ex["answer"] == CLUES[0]["fact"] and ex["answer_source"] == "facts"
    assert ex["citations"] == [{"chunk_id": "manual.md#c0", "sentence_id": "manual.md#c0:s0"}]
    assert ex["query"] == "When must the pump be primed?"


def test_auto_settings_follow_the_prompt_variant():
    small, large = RagsynthConfig().resolved(True), RagsynthConfig().resolved(False)
    assert (small.clues, small.single_hop_answer) == ("sentences", "facts")
    assert (large.clues, large.single_hop_answer) == ("model", "model")
    assert RagsynthConfig(clues="model").resolved(True).clues == "model"  # an explicit choice wins
