"""``synthrag report``: a fake run directory with the real schemas renders a complete page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import pipelines.cli.ops  # noqa: F401  (registers the commands)
from pipelines import report
from pipelines.cli.app import app
from pipelines.core.schema import (
    CHUNKS,
    EXAMPLES,
    REJECT_DETAIL,
    REJECT_REASON,
    RETRIEVAL_LISTS,
    SENTENCES,
    to_table,
)

DOC = ("Marie Curie was born in Warsaw in 1867. She moved to Paris to study physics. "
       "In 1903 she shared the Nobel Prize in Physics.  She later won a second Nobel Prize "
       "in Chemistry in 1911.")
SENTS = ["Marie Curie was born in Warsaw in 1867.", "She moved to Paris to study physics.",
         "In 1903 she shared the Nobel Prize in Physics.",
         "She later won a second Nobel Prize in Chemistry in 1911."]


def _write(table: pa.Table, folder: Path, parts: int = 1) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    step = max(1, -(-table.num_rows // parts))
    for i in range(parts):
        pq.write_table(table.slice(i * step, step), folder / f"part-{i:05d}.parquet")


def _chunk_row(cid: str, text: str, start: int, sids: list[str], spans: list[tuple[int, int]]):
    row = {"chunk_id": cid, "doc_id": "d1", "title": "Marie Curie", "text": text,
           "token_count": len(text.split()), "char_start": start, "char_end": start + len(text),
           "sentences": sids}
    if "sentence_spans" in CHUNKS.names:  # the schema is growing: fill what it has
        row["sentence_spans"] = [{"start": a, "end": b} for a, b in spans]
    return row


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run1"
    # two chunks of one document; sentences carry document offsets
    offsets = [DOC.index(s) for s in SENTS]
    sent_rows = [{"sentence_id": f"s{i}", "chunk_id": "c1" if i < 2 else "c2", "doc_id": "d1",
                  "text": s, "char_start": o, "char_end": o + len(s)}
                 for i, (s, o) in enumerate(zip(SENTS, offsets))]
    c1_text, c2_text = DOC[: offsets[2]].strip(), DOC[offsets[2]:]
    chunks = [
        _chunk_row("c1", c1_text, 0, ["s0", "s1"],
                   [(offsets[0], offsets[0] + len(SENTS[0])), (offsets[1], offsets[1] + len(SENTS[1]))]),
        _chunk_row("c2", c2_text, offsets[2], ["s2", "s3"],
                   [(0, len(SENTS[2])), (offsets[3] - offsets[2], offsets[3] - offsets[2] + len(SENTS[3]))]),
    ]
    _write(to_table(chunks, CHUNKS), run / "chunks")
    _write(to_table(sent_rows, SENTENCES), run / "sentences", parts=2)
    examples = [
        {"example_id": "e1", "method": "ragsynth", "task": "single_hop",
         "query": "Where was Marie Curie born?", "answer": "Warsaw",
         "citations": [{"chunk_id": "c1", "sentence_id": "s0"}], "positives": ["c1"],
         "meta": json.dumps({"judge": {"faithfulness": 4, "relevance": 5}})},
        {"example_id": "e2", "method": "prismrag", "task": "distractor_qa",
         "query": "In which field was the 1911 prize?", "answer": "Chemistry",
         "citations": [{"chunk_id": "c2", "sentence_id": "s3"}], "positives": ["c2"],
         "meta": json.dumps({"judge": {"faithfulness": 3, "relevance": 4}})},
    ] + [{"example_id": f"x{i}", "method": "scarlet", "task": "summary", "query": f"q{i}",
          "answer": "a", "citations": [], "positives": [],
          "meta": json.dumps({"utility": i / 10})} for i in range(30)]
    _write(to_table(examples, EXAMPLES), run / "examples", parts=3)
    lists = [{"query_id": f"q{i}", "query": f"query {i}", "query_type": "keyword",
              "positive": "c1", "candidates": ["c1", "c2"],
              "teacher_scores": [0.9 - i / 100, 0.1 + i / 100]} for i in range(20)]
    _write(to_table(lists, RETRIEVAL_LISTS), run / "retrieval_lists")
    rej = pa.table({"query": ["What what what?", "copy of the passage"],
                    REJECT_REASON: ["invalid_json", "copied_passage"],
                    REJECT_DETAIL: ["Expecting value: line 1 column 1", "overlap 0.97"]})
    _write(rej, run / "rejects" / "generate_questions")
    manifest = {
        "created": "2026-11-23T10:00:00+00:00", "command": "synthrag run ragsynth",
        "status": "done", "config": {"llm": {"model": "embedded"}, "seed": 7},
        "versions": {"synthrag": "0.1.0", "ray": "2.60.0"},
        "stages": [
            {"name": "ingest", "in": 1, "out": 1, "rejected": {}, "status": "done",
             "seconds": 1.25},
            {"name": "generate_questions", "in": 34, "out": 32,
             "rejected": {"copied_passage": 1, "invalid_json": 1}, "status": "done",
             "seconds": 75.5,
             "llm": {"calls": 40, "retries": 6, "prompt_tokens": 17000, "cached_prompt_tokens": 4250,
                     "generated_tokens": 900, "seconds": 70.1, "seconds_per_row": 2.062}},
        ],
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def test_report_page_has_funnel_scores_examples_and_rejects(run_dir: Path):
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    path = run_dir / "report.html"
    assert result.stdout.strip() == str(path)
    html = path.read_text()

    # funnel: stage names, counts, reasons
    for s in ("ingest", "generate_questions", "copied_passage", "invalid_json"):
        assert s in html
    row = re.search(r"<b>generate_questions</b>.*?</tr>", html, re.S).group(0)
    assert re.findall(r'class="num">([\d,]+)<', row) == ["34", "32", "2"]
    assert "1.2 s" in html and "1.3 min" in html  # timings (1.25 s, 75.5 s)
    # where the LLM stage's time went: calls, retries, reused share of the prompt tokens
    cost = " ".join(row.split())
    assert "40 calls (6 retries)" in cost and "17,000 prompt tok, 25% reused" in cost and "2.06 s/row" in cost
    # score distributions from list columns, meta JSON and plain meta numbers
    for name in ("retrieval_lists.teacher_scores", "examples.meta.judge.faithfulness",
                 "examples.meta.utility"):
        assert name in html
    assert "n=40 ·" in html  # 20 lists x 2 teacher scores, flattened
    # the cited sentence is highlighted inside its chunk, the uncited one is not
    assert '<mark title="s0">Marie Curie was born in Warsaw in 1867.</mark>' in html
    assert ('<mark title="s3">She later won a second Nobel Prize in Chemistry in 1911.</mark>'
            in html)
    assert "She moved to Paris to study physics." in html
    assert '<mark title="s1">' not in html
    assert "Where was Marie Curie born?" in html
    # reject samples with their details
    assert "overlap 0.97" in html and "copy of the passage" in html
    # offline: plotly inlined once, nothing fetched
    assert not re.search(r"<script[^>]+src=", html)
    assert not re.search(r"<link[^>]+href=[\"']?https?:", html)
    assert html.count("Plotly.newPlot") >= 5  # funnel, timings, 3+ histograms
    assert len(html) > 3_000_000  # plotly.js itself is embedded


def test_sentence_is_located_without_spans_by_offsets_or_text():
    chunk = {"text": "Intro.  The sky is\nblue today. End.", "char_start": 100,
             "sentences": ["a", "b"], "sentence_spans": None}
    # document offsets agree with the chunk text
    assert report.sentence_span(chunk, "b", {"text": "Intro.", "char_start": 100}) == (0, 6)
    # offsets disagree (sentence normalised whitespace): found by text
    sp = report.sentence_span(chunk, "b", {"text": "The sky is blue today.", "char_start": 5})
    assert chunk["text"][sp[0]:sp[1]] == "The sky is\nblue today."
    assert report.sentence_span(chunk, "c", {"text": "absent", "char_start": 0}) is None


def test_highlight_escapes_text_and_merges_overlaps():
    out = report.highlight("a <b> c d", [(0, 5, "x"), (3, 7, "y")])
    assert str(out) == '<mark title="x">a &lt;b&gt;</mark><mark title="y"> c</mark> d'


def test_sampling_is_bounded(tmp_path: Path):
    t = pa.table({"score": list(range(10_000))})
    _write(t, tmp_path / "t", parts=10)
    ds = report._dataset(tmp_path / "t")
    got = report.sample(ds, ["score"], 50)
    assert got.num_rows == 50
    assert len(set(v // 1000 for v in got.column("score").to_pylist())) == 10  # every file


def test_report_of_an_empty_run(tmp_path: Path):
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "running", "stages": []}))
    html = report.write_report(tmp_path).read_text()
    assert "The manifest records no stages." in html and "No examples table" in html


def test_a_broken_table_is_a_warning_not_a_failure(run_dir: Path):
    (run_dir / "examples" / "part-00009.parquet").write_bytes(b"not parquet at all")
    html = report.write_report(run_dir).read_text()
    assert "Report warnings" in html and "examples" in html
    assert "generate_questions" in html  # the funnel still renders


def test_retrieval_metrics_of_a_stage_are_tabled(tmp_path: Path):
    stage = {"name": "querygen_eval", "in": 81, "out": 81, "rejected": {}, "status": "done", "seconds": 3.0,
             "metrics": {"base": {"ndcg@10": 0.7604, "recall@100": 0.9465},
                         "trained": {"ndcg@10": 0.7712, "recall@100": 0.9512}}}
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "done", "stages": [stage]}))
    html = report.render(tmp_path)
    assert "<h3>querygen_eval</h3>" in html
    for cell in ("<td>base</td>", "<td>trained</td>", "0.7604", "0.9512", '<th class="num">recall@100</th>'):
        assert cell in html


def test_saved_csg_evaluations_are_tabled_per_level(tmp_path: Path):
    (tmp_path / "evals").mkdir()
    summary = {"answers": "/x/answers.jsonl", "judge": "likelihood", "examples": 3, "csg": 0.5417,
               "c_comp": 0.5, "c_under": 0.5, "c_cite": 0.625,
               "by_level": {"full": {"examples": 2, "csg": 0.625, "c_comp": 0.75, "c_under": None, "c_cite": 0.5},
                            "none": {"examples": 1, "csg": 0.5, "c_comp": None, "c_under": 0.0, "c_cite": 1.0}}}
    (tmp_path / "evals" / "csg_answers.json").write_text(json.dumps(summary))
    html = report.render(tmp_path)
    assert "CSG of answers.jsonl (likelihood judge)" in html
    table = html[html.index("CSG of answers.jsonl"):]
    table = table[:table.index("</table>")]
    assert re.search(r"<td>all</td>.*?0\.5417", table) and re.search(r"<td>none</td>.*?1\.0", table)
