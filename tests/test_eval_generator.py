"""CSG pieces: answers files, citation markers, citation F1 and the judges' decisions."""

from __future__ import annotations

import json

import pytest

from pipelines.eval import generator as eg
from pipelines.stages.citations import f1


def test_answers_file_accepts_run_and_generate_shapes(tmp_path):
    p = tmp_path / "answers.jsonl"
    p.write_text("\n".join([
        json.dumps({"example_id": "e1", "answer": "A.", "citations": ["s1", {"chunk_id": "c", "sentence_id": "s2"}]}),
        json.dumps({"record_id": "e2", "prediction": "B [1]."}),
        "",
    ]))
    got = eg.load_answers(p)
    assert got == {"e1": {"answer": "A.", "citations": ["s1", "s2"]}, "e2": {"answer": "B [1].", "citations": None}}
    p.write_text('{"answer": "no id"}\n')
    with pytest.raises(ValueError, match="no example_id"):
        eg.load_answers(p)


def test_markers_map_to_sentence_ids():
    text, ids = eg.parse_citations("Born in Elblag [2][3]. Founded it [1] [9].", ["s0", "s1", "s2"])
    assert ids == ["s1", "s2", "s0"] and text == "Born in Elblag . Founded it ."


def test_citation_f1():
    assert f1(["a", "b"], ["a", "b"]) == 1.0
    assert f1(["a"], ["a", "b"]) == pytest.approx(2 / 3)
    assert f1([], []) == 1.0 and f1(["a"], []) == 0.0 and f1([], ["a"]) == 0.0


def _reply(per_token: float, n: int = 4) -> dict:
    return {"logprobs": [per_token * n], "tokens": [n]}


def test_likelihood_judge_decisions():
    it = {"question": "Q?", "answer": "She was born in Elblag. The rest is not in the documents."}
    cover = {"kind": "cover", "text": "She was born in Elblag."}
    missing = {"kind": "acknowledge", "text": "She founded Harbor Instruments in 1987."}

    def replies(stated_cover, stated_missing, says_missing):
        r = {}
        for crit, pmi, ins in ((cover["text"], stated_cover, eg.STATE), (missing["text"], stated_missing, eg.STATE),
                               (eg.MISSING_TEXT, says_missing, eg.MISSING)):
            r[eg._row("likelihood", "Q?", it["answer"], crit, ins)["key"]] = _reply(-1.0 + pmi)
            r[eg._row("likelihood", "Q?", eg.NO_ANSWER, crit, ins)["key"]] = _reply(-1.0)
        return r

    good = replies(2.0, 0.2, 0.8)
    assert eg.criterion_holds(it, cover, good, "likelihood", 1.0, 0.5, 0.5) is True
    assert eg.criterion_holds(it, missing, good, "likelihood", 1.0, 0.5, 0.5) is True
    invented = replies(2.0, 1.8, 0.8)  # states the fact it was not given
    assert eg.criterion_holds(it, missing, invented, "likelihood", 1.0, 0.5, 0.5) is False
    silent = replies(0.3, 0.2, 0.1)  # neither states the fact nor says anything is missing
    assert eg.criterion_holds(it, cover, silent, "likelihood", 1.0, 0.5, 0.5) is False
    assert eg.criterion_holds(it, missing, silent, "likelihood", 1.0, 0.5, 0.5) is False
    assert eg.criterion_holds(it, cover, {}, "likelihood", 1.0, 0.5, 0.5) is None


def test_judge_rows_are_unique_and_cover_every_criterion():
    items = [{"question": "Q?", "answer": "A.", "rubric": [{"kind": "cover", "text": "x"},
                                                             {"kind": "acknowledge", "text": "y"}]}]
    rows = eg.judge_rows(items, "likelihood")
    assert len(rows) == len({r["key"] for r in rows}) == 6  # 2 criteria + "missing" statement, each x2
    yn = eg.judge_rows(items, "yes-no")
    assert sorted(r["prompt"] for r in yn) == ["acknowledge", "cover"]
