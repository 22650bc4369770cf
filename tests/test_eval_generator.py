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


def test_csg_aggregates_as_eq_4_to_6():
    """Two answerable, one partial, one unanswerable query, computed by hand."""
    def item(eid, kind, cited, reference):
        return {"example_id": eid, "kind": kind, "cited": cited, "reference": reference}

    rows = [
        eg.example_scores(item("a1", "full", ["s1"], ["s1"]), [("cover", True), ("cover", True)]),
        eg.example_scores(item("a2", "rewrite:synonyms", [], ["s2"]), [("cover", True), ("cover", False)]),
        eg.example_scores(item("p", "partial", ["s3", "s9"], ["s3"]),
                          [("cover", False), ("acknowledge", True), ("cover", None)]),
        eg.example_scores(item("u", "refusal", [], []), [("acknowledge", False)]),
    ]
    assert [r["level"] for r in rows] == ["full", "full", "partial", "none"]
    assert rows[2]["judge_failures"] == 1 and rows[2]["c_cite"] == pytest.approx(2 / 3)
    got = eg.aggregate(rows)
    # C_comp over the three queries with answerable parts, C_under over the two with missing parts,
    # C_cite over all four; CSG the mean of those three averages.
    c_comp, c_under, c_cite = (1 + 0.5 + 0) / 3, (1 + 0) / 2, (1 + 0 + 2 / 3 + 1) / 4
    assert got["c_comp"] == pytest.approx(c_comp, abs=1e-4)
    assert got["c_under"] == pytest.approx(c_under, abs=1e-4)
    assert got["c_cite"] == pytest.approx(c_cite, abs=1e-4)
    assert got["csg"] == pytest.approx((c_comp + c_under + c_cite) / 3, abs=1e-4)
    per_example_mean = sum(r["csg_example"] for r in rows) / 4  # what the per-answer average would give
    assert abs(per_example_mean - got["csg"]) > 0.01
    none = eg.aggregate([rows[3]])
    assert none["c_comp"] is None and none["csg"] == pytest.approx((0 + 1) / 2)
