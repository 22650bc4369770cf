"""Chunk quality: prose reaches the LLM stages; API reference dumps, symbol tables, loops and
boilerplate are rejects ``low_content`` with their signals; ``--limit`` takes the best chunks
spread over documents."""

from __future__ import annotations

import json
import pydoc
import re

import pyarrow.dataset as pads

from pipelines.core.run import Run
from pipelines.stages.ingest import IngestConfig, ingest
from pipelines.stages.quality import (
    QualityConfig,
    failures,
    line_keys,
    signals,
    spread_best,
)

CFG = QualityConfig()
PROSE = ("The reservoir at Olsztyn was built in 1904 to supply the growing town with clean water. "
         "Its brick tower still stands beside the lake, and the pumps it housed ran until 1968. "
         "Engineers later moved the intake upstream, where the river carries less silt in spring.")
TABLE = "\n".join(["| Year | City | Visitors | Notes |", "|---|---|---|---|"] +
                  [f"| {1990 + i} | C{i} | {i * 1234:,} | {'x' * (i % 3)} |" for i in range(20)])
LOOP = " ".join(["the pump the pump works and"] * 12) + "."


def _spans(text: str) -> list[dict]:
    return [{"start": m.start(), "end": m.end()} for m in re.finditer(r"[^.!?\n]+[.!?]?", text)]


def _verdict(text: str, boilerplate: set[int] = frozenset()) -> tuple[dict, list[str]]:
    sig = signals(text, _spans(text), set(boilerplate), CFG)
    return sig, failures(sig, CFG)


def test_prose_is_kept_and_tables_loops_and_reference_dumps_are_not():
    sig, bad = _verdict(PROSE)
    assert bad == [] and sig["words"] > 0.9 and sig["sentences"] == 3
    sig, bad = _verdict(TABLE)
    assert any(b.startswith("words<") for b in bad) and sig["score"] < CFG.min_score
    sig, bad = _verdict(LOOP)
    assert any(b.startswith("repetition>") for b in bad)
    # a library reference page as pydoc renders it: signatures in a "|" gutter, dunder names
    page = pydoc.render_doc(dict, renderer=pydoc.plaintext)
    methods = page[page.index("Methods defined here"):][:1500]
    sig, bad = _verdict(methods)
    assert bad, sig
    assert _verdict("")[1]  # nothing to ask about


def test_lines_shared_by_many_documents_are_boilerplate():
    footer = "See help(type(self)) for accurate signature."
    text = f"{footer}\nInitialize self.\n{footer}"
    sig, bad = _verdict(text, set(line_keys(footer, CFG.boilerplate_min_chars)))
    assert sig["boilerplate"] > CFG.max_boilerplate and any(b.startswith("boilerplate>") for b in bad)
    assert _verdict(PROSE, set(line_keys(footer, CFG.boilerplate_min_chars)))[1] == []


def test_limit_takes_each_documents_best_chunk_first():
    rows = [{"chunk_id": f"{d}#{k}", "doc_id": d, "score": s}
            for d, scores in {"a": [0.9, 0.95, 0.7], "b": [0.8], "c": [0.65, 0.99]}.items()
            for k, s in enumerate(scores)]
    assert spread_best(rows, 3, seed=0) == sorted(["a#1", "b#0", "c#1"])  # one per document
    assert spread_best(rows, 4, seed=0) == sorted(["a#1", "b#0", "c#1", "a#0"])  # then the next-best
    assert spread_best(rows, None, seed=0) == sorted(r["chunk_id"] for r in rows)


def test_ingest_scores_every_chunk_and_rejects_low_content_with_its_signals(ray_local, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    footer = "Copyright Tidewater Pumps. All rights reserved. Terms of use."
    for i in range(3):  # the same footer on three pages: boilerplate
        (corpus / f"page{i}.txt").write_text(f"{footer}\n{footer}\n")
    (corpus / "prose.txt").write_text(PROSE + "\n" + footer)
    (corpus / "table.md").write_text(TABLE)
    run = Run.open(tmp_path / "run", command="test", config={})
    ingest(run, corpus, IngestConfig(splitter="regex", dedupe=False, min_chunk_words=4))
    st = {s["name"]: s for s in run.manifest["stages"]}["quality"]
    assert st["in"] == run.count("chunks") == st["out"] + sum(st["rejected"].values())
    assert st["boilerplate_lines"] == 1
    kept = pads.dataset(run.path("chunk_quality")).to_table().to_pylist()
    assert [r["doc_id"] for r in kept] == ["prose.txt"]
    rejects = pads.dataset(run.path("rejects/quality")).to_table().to_pylist()
    assert {r["doc_id"] for r in rejects} == {"page0.txt", "page1.txt", "page2.txt", "table.md"}
    assert {r["reject_reason"] for r in rejects} == {"low_content"}
    detail = {r["doc_id"]: json.loads(r["reject_detail"]) for r in rejects}
    assert any(f.startswith("boilerplate>") for f in detail["page0.txt"]["failed"])
    assert any(f.startswith("words<") for f in detail["table.md"]["failed"])
    assert set(st["failed"]) >= {f"boilerplate>{CFG.max_boilerplate}", f"words<{CFG.min_words}"}
    # the chunks table stays whole: retrieval indexes every chunk
    assert run.count("chunks") == len(kept) + len(rejects)
