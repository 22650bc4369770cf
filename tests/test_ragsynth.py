"""RAGSynth single-hop: citation resolution (M2 ∘ M1), checks, and the pipeline end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from pipelines.ragsynth import check_clues, check_qa, resolve, support

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


def _qa_row(answer, question="Why must the pump never run dry?"):
    return {**ROW, "clue_json": json.dumps(CLUES), "clues": [c["fact"] for c in CLUES],
            "llm_output": json.dumps({"question": question, "answer": answer})}


def test_citations_compose_answer_to_clue_to_sentence():
    res = resolve(_qa_row([{"sentence": "Without water the seal overheats within 30 seconds.", "facts": [2]}]),
                  0.5, LINEAGE)
    ex = res["example"]
    assert ex["citations"] == [{"chunk_id": "manual.md#c0", "sentence_id": "manual.md#c0:s1"},
                               {"chunk_id": "manual.md#c0", "sentence_id": "manual.md#c0:s2"}]
    assert ex["positives"] == ["manual.md#c0"] and ex["hop"] == 1
    assert ex["clues"][1]["sentence_ids"] == ["manual.md#c0:s1", "manual.md#c0:s2"]
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


@pytest.mark.slow
def test_run_ragsynth_end_to_end(ray_local, tmp_path):
    """The real embedded model over the sample corpus: whatever it yields must be consistent."""
    from typer.testing import CliRunner

    import pipelines.cli_data  # noqa: F401  (registers the commands)
    from pipelines.cli_app import app

    corpus = Path(__file__).resolve().parents[1] / "examples" / "corpus"
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "ragsynth", "--corpus", str(corpus), "--out", str(out), "--limit", "6"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done"
    names = [s["name"] for s in manifest["stages"]]
    assert names == ["read", "chunk", "dedupe", "sentences", "ragsynth_clues", "ragsynth_qa", "ragsynth_cite"]
    for s in manifest["stages"]:
        assert s["in"] == s["out"] + sum(s["rejected"].values()), s
        if sum(s["rejected"].values()):
            assert (out / "rejects" / s["name"]).is_dir()
    stages = {s["name"]: s for s in manifest["stages"]}
    assert stages["ragsynth_clues"]["in"] == 6
    assert stages["ragsynth_qa"]["in"] == stages["ragsynth_clues"]["out"]
    assert stages["ragsynth_cite"]["in"] == stages["ragsynth_qa"]["out"]

    examples = pads.dataset(out / "examples").to_table().to_pylist()
    sentences = {(r["chunk_id"], r["sentence_id"]): r["text"]
                 for r in pads.dataset(out / "sentences").to_table().to_pylist()}
    for ex in examples:
        assert ex["citations"], ex
        for c in ex["citations"]:
            assert (c["chunk_id"], c["sentence_id"]) in sentences
        assert ex["model"] == "SmolLM2-135M-Instruct" and ex["prompt_id"] == "ragsynth/qa@2"
        assert support(ex["answer"], [sentences[(c["chunk_id"], c["sentence_id"])] for c in ex["citations"]]) >= 0.5
    assert stages["ragsynth_cite"]["citations_checked"]["missing"] == 0
    lines = (out / "exports" / "examples.jsonl").read_text().splitlines()
    assert len(lines) == len(examples)

    # a rerun skips every finished stage and changes nothing
    before = {p.name: p.stat().st_mtime_ns for p in (out / "examples").iterdir()}
    res = CliRunner().invoke(app, ["run", "ragsynth", "--corpus", str(corpus), "--out", str(out), "--limit", "6"])
    assert res.exit_code == 0, res.output
    assert res.output.count("up to date, skipped") == 7
    assert {p.name: p.stat().st_mtime_ns for p in (out / "examples").iterdir()} == before
