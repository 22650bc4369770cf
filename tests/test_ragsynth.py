"""RAGSynth single-hop: citation resolution (M2 ∘ M1), checks, and the pipeline end to end."""

from __future__ import annotations

import json

from pipelines.ragsynth.singlehop import (
    check_clues,
    check_qa,
    clue_records,
    resolve,
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
