"""`synthrag eval factuality`'s readers (CRAG jsonl/bz2, truncated bz2, HotpotQA, generic), its
arithmetic (factuality = accuracy − hallucination), rule labels, judge replies outside the label
set (counted as unlabelled, never dropped) and the context budget."""

from __future__ import annotations

import bz2
import json

import pytest

from pipelines.eval.factuality import (
    curve_svg,
    curve_table,
    judge_label,
    rule_label,
    shares_a_word,
    shown_references,
    summarise,
)
from pipelines.eval.factuality_data import TruncatedInput, read_items
from pipelines.prismrag.seed import check_seed
from pipelines.stages.truncate import truncate_words

CRAG = [{"interaction_id": "q1", "query": "who wrote dune?", "answer": "Frank Herbert", "alt_ans": ["F. Herbert"],
         "search_results": [{"page_name": "Dune", "page_snippet": "Dune is a 1965 novel by Frank Herbert.",
                             "page_result": "<html>...</html>"},
                            {"page_name": "Empty snippet", "page_snippet": "",
                             "page_result": "<p>Dune <b>sold</b> 20 million copies.</p>"}]},
        {"interaction_id": "q2", "query": "what is the capital of peru?", "answer": "Lima", "alt_ans": [],
         "search_results": []},
        {"interaction_id": "q3", "query": "empty answer?", "answer": "", "alt_ans": [], "search_results": []}]


def _write(path, rows, extra: str = ""):
    text = "".join(json.dumps(r) + "\n" for r in rows) + extra
    if path.suffix == ".bz2":
        path.write_bytes(bz2.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_crag_jsonl_and_bz2_read_the_same_and_count_every_skip(tmp_path):
    for name in ("crag.jsonl", "crag.jsonl.bz2"):
        items, counts = read_items(_write(tmp_path / name, CRAG, "not json\n"), rank="given")
        assert [i["id"] for i in items] == ["q1", "q2"]
        assert items[0]["answers"] == ["Frank Herbert", "F. Herbert"]
        assert items[0]["references"] == ["Dune: Dune is a 1965 novel by Frank Herbert.",
                                          "Empty snippet: Dune sold 20 million copies."]  # HTML stripped
        assert counts["empty_answer"] == 1 and counts["bad_json"] == 1 and counts["lines"] == 4


def test_truncated_bz2_is_a_clear_error_or_counted_rows(tmp_path):
    rows = [{**CRAG[0], "interaction_id": f"q{i}"} for i in range(400)]
    # four bz2 streams of 100 rows (as pbzip2 writes them); the download stopped inside the last
    streams = [bz2.compress("".join(json.dumps(r) + "\n" for r in rows[i:i + 100]).encode()) for i in (0, 100, 200, 300)]
    cut = tmp_path / "cut.jsonl.bz2"
    cut.write_bytes(b"".join(streams[:3]) + streams[3][: len(streams[3]) // 2])
    with pytest.raises(TruncatedInput, match="truncated.*complete line"):
        read_items(cut)
    items, counts = read_items(cut, allow_truncated=True)
    assert counts["truncated_input"] == 1 and 300 <= len(items) < 400
    # the line cut in half, if any, is counted as bad JSON, never silently lost
    assert counts["lines"] == len(items) + counts["bad_json"]


def test_hotpotqa_both_layouts_and_generic(tmp_path):
    hf = {"id": "h1", "question": "Which city hosts the Tidewater pump factory?", "answer": "Olsztyn",
          "context": {"title": ["Other", "Tidewater"], "sentences": [["Cats purr."], ["The Tidewater pump", " factory is in Olsztyn."]]}}
    orig = {"_id": "h2", "question": "q?", "answer": "a", "context": [["T", ["s1.", " s2."]]]}
    gen = {"id": "g1", "question": "Who?", "answer": "Ann", "alt_answers": ["Anna"],
           "references": ["Ann did it.", {"title": "Note", "text": "Anna was there."}]}
    items, counts = read_items(_write(tmp_path / "mix.jsonl", [hf, orig, gen, {"foo": 1}]))
    assert counts["format_hotpotqa"] == 2 and counts["format_generic"] == 1 and counts["unknown_format"] == 1
    # references ranked by word overlap with the question: the supporting paragraph comes first
    assert items[0]["references"][0] == "Tidewater: The Tidewater pump factory is in Olsztyn."
    assert items[1]["references"] == ["T: s1. s2."]
    assert items[2]["answers"] == ["Ann", "Anna"] and "Note: Anna was there." in items[2]["references"]


def test_factuality_arithmetic_and_unlabelled_answers_are_counted():
    s = summarise(["accurate", "accurate", "hallucinated", "missing", None])
    assert (s["n"], s["accurate"], s["hallucinated"], s["missing"], s["unlabelled"]) == (5, 2, 1, 1, 1)
    assert s["accuracy"] == 0.4 and s["hallucination"] == 0.2 and s["factuality"] == pytest.approx(0.2)
    assert s["factuality_labelled"] == pytest.approx(0.25)  # (2 - 1) / 4 labelled
    assert summarise([])["factuality"] is None


def test_judge_replies_outside_the_label_set_are_unlabelled():
    assert judge_label({"label": "Accurate "}) == "accurate"
    assert judge_label({"label": "maybe"}) is None
    assert judge_label(None) is None and judge_label({"verdict": "accurate"}) is None


def test_rule_labels_refusals_empty_and_exact_matches():
    assert rule_label(None, ["Lima"]) == "missing" and rule_label("  ", ["Lima"]) == "missing"
    assert rule_label("I don't know.", ["Lima"]) == "missing"
    assert rule_label("the Lima!", ["Lima"]) == "accurate"
    assert rule_label("F. Herbert", ["Frank Herbert", "F. Herbert"]) == "accurate"
    assert rule_label("Cusco", ["Lima"]) is None  # the judge decides
    assert not shares_a_word("Tinted Windows", ["Tulsa"]) and shares_a_word("in Tulsa, OK", ["Tulsa"])


def test_references_longer_than_the_window_are_cut_by_the_stated_rule():
    text = "One two three. Four five six seven. Eight nine."
    assert truncate_words(text, 20) == (text, None)
    cut, rec = truncate_words(text, 8)
    assert cut == "One two three. Four five six seven." and rec == {"rule": "leading_sentences", "from_words": 9,
                                                                     "to_words": 7}
    cut, rec = truncate_words("a " * 50, 10)
    assert cut.split() == ["a"] * 10 and rec["rule"] == "leading_words"
    refs, n_cut = shown_references(["w " * 500, "short one"], 2, 300, 400)
    assert len(refs[0].split()) == 200 and refs[1] == "short one" and n_cut == 1


def test_empty_seed_answers_and_na_are_rejects():
    assert check_seed({"reference": "It was built in Gdansk in 1923 by Frank Herbert x"}, {"question": "N/A", "answer": "N/A"}).startswith("no_seed_qa")
    assert check_seed({"reference": "It was built in Gdansk in 1923 by Frank Herbert x"}, {"question": "Where?", "answer": " . "}).startswith("empty_answer")
    assert check_seed({"reference": "It was built in Gdansk in 1923 by Frank Herbert x"}, {"question": "Where was it built?", "answer": "Gdansk"}) is None
    assert check_seed({"reference": "It was built in Gdansk in 1923 by Frank Herbert x"}, {"question": "What is the current time?", "answer": "2022"}).startswith("asks_current")
    assert check_seed({"reference": "It was built in Gdansk in 1923 by Frank Herbert x"}, {"question": "What is the current current current current current?", "answer": "x"}
                      ).startswith("degenerate_reply")
    assert check_seed({"reference": "It was built in Gdansk in 1923 by Frank Herbert x"}, {"question": "The answer is: 1923", "answer": "1923"}).startswith("not_a_question")


def test_curve_table_and_svg():
    curve = {"1": summarise(["accurate", "missing"]), "5": summarise(["accurate", "hallucinated"])}
    table = curve_table(curve)
    assert "| 1 | 2 | 50.0% | 0.0% | 50.0% | 0 | 50.0% |" in table and "| 5 |" in table
    svg = curve_svg(curve)
    assert svg.startswith("<svg") and svg.count("<polyline") == 3


def test_eval_factuality_cli_writes_the_curve_and_every_verdict(ray_local, tiny_llm, tmp_path):
    """The command end to end on the tiny random model (mechanics only): a sweep over 1 and 2
    references, one verdict per question and N, the table, the SVG report."""
    from typer.testing import CliRunner

    import pipelines.cli.eval_factuality  # noqa: F401  (registers the command)
    from pipelines.cli.app import app

    data = _write(tmp_path / "qa.jsonl", [
        {"id": "g1", "question": "Who built the pump?", "answer": "Ann", "references": ["Ann built the pump.", "Bo sang."]},
        {"id": "g2", "question": "Where is Lima?", "answer": "Peru", "references": ["Lima is in Peru."]},
        {"id": "g3", "question": "Empty?", "answer": "", "references": []}])
    out = tmp_path / "fact"
    res = CliRunner().invoke(app, ["eval", "factuality", "--model", str(tiny_llm), "--judge", str(tiny_llm),
                                   "--data", str(data), "--references", "2,1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input"]["empty_answer"] == 1 and summary["references"] == [1, 2]
    verdicts = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert len(verdicts) == 4 and {v["k"] for v in verdicts} == {1, 2}
    for k in ("1", "2"):
        c = summary["curve"][k]
        assert c["n"] == 2 == c["accurate"] + c["hallucinated"] + c["missing"] + c["unlabelled"]
        assert c["judge_accurate_no_overlap"] <= c["accurate"]
    assert all(v["label_source"] == "rule" or v["judge_raw"] is not None or v["judge_error"] for v in verdicts)
    assert "<svg" in (out / "report.html").read_text() and "| 2 |" in (out / "curve.md").read_text()
    cut = tmp_path / "cut.jsonl.bz2"
    cut.write_bytes(bz2.compress(b'{"question": "q", "answer": "a", "references": []}\n' * 50)[:40])
    res = CliRunner().invoke(app, ["eval", "factuality", "--model", "embedded", "--data", str(cut)])
    assert res.exit_code == 2 and "truncated" in res.output
