"""Retrieval evaluation: BEIR folders, pytrec_eval metrics, TREC runs, the CLI, SciFact."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

import pipelines.cli.eval_retrieval  # noqa: F401  (registers `eval retrieval`)
from pipelines.cli.app import app
from pipelines.eval.retrieval import (
    evaluate,
    per_query_metrics,
    read_trec_run,
    write_trec_run,
)
from pipelines.exports.beir import (
    iter_corpus,
    load_qrels,
    load_queries,
    passage_text,
    write_beir,
)

QRELS = {"q1": {"d1": 1}, "q2": {"d4": 1, "d5": 1}, "q3": {"d9": 1}, "q4": {"d1": 1}}
RANKING = {
    "q1": {"d2": 0.9, "d1": 0.8, "d3": 0.7},  # hit at rank 2
    "q2": {"d4": 0.9, "d6": 0.8, "d7": 0.7, "d5": 0.6},  # hits at ranks 1 and 4
    "q3": {**{f"x{i}": 0.99 - i / 100 for i in range(10)}, "d9": 0.5},  # hit at rank 11
    # q4 judged but not retrieved: scores 0; q5 retrieved but not judged: ignored
    "q5": {"d1": 0.9},
}


def test_metrics_match_hand_computation():
    m = evaluate(None, QRELS, RANKING)
    ndcg_q1 = 1 / math.log2(3)
    ndcg_q2 = (1 + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert m["num_queries"] == 4
    assert m["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 4, abs=1e-6)
    assert m["recall@100"] == pytest.approx(3 / 4)
    assert m["mrr@10"] == pytest.approx((1 / 2 + 1) / 4)  # q3's hit at rank 11 is cut off
    assert m["p@3"] == pytest.approx((1 / 3 + 1 / 3) / 4)
    per_q = per_query_metrics(QRELS, RANKING)
    assert per_q["q3"] == {"ndcg@10": 0.0, "recall@100": 1.0, "p@3": 0.0, "mrr@10": 0.0}
    assert per_q["q4"] == {"ndcg@10": 0.0, "recall@100": 0.0, "p@3": 0.0, "mrr@10": 0.0}
    # restricting to a queries dict evaluates only those judged queries
    assert evaluate({"q2": "..."}, QRELS, RANKING)["mrr@10"] == pytest.approx(1.0)


def test_ties_follow_trec_eval_and_the_run_file(tmp_path):
    # equal scores: trec_eval ranks the larger doc id first, and so does the run file
    ranking = {"q1": {"d1": 0.5, "d2": 0.5}}
    assert evaluate(None, {"q1": {"d1": 1}}, ranking)["mrr@10"] == pytest.approx(0.5)
    run = write_trec_run(ranking, tmp_path / "tie.run", tag="t")
    assert run.read_text().splitlines() == ["q1 Q0 d2 1 0.50000000 t", "q1 Q0 d1 2 0.50000000 t"]
    assert read_trec_run(run) == ranking


def test_beir_folder_roundtrip(tmp_path):
    corpus = [{"_id": "d1", "title": "T", "text": "one"}, {"_id": "d2", "title": "", "text": "two"}]
    write_beir(tmp_path / "b", corpus, {"q1": "first?"}, {"q1": {"d1": 1, "d2": 0}}, split="dev")
    assert (tmp_path / "b" / "qrels" / "dev.tsv").read_text().splitlines()[0] == \
        "query-id\tcorpus-id\tscore"
    assert [d for batch in iter_corpus(tmp_path / "b", batch_size=1) for d in batch] == corpus
    assert load_queries(tmp_path / "b") == {"q1": "first?"}
    assert load_qrels(tmp_path / "b", "dev") == {"q1": {"d1": 1, "d2": 0}}
    with pytest.raises(FileNotFoundError, match="dev"):
        load_qrels(tmp_path / "b", "test")
    assert passage_text("Title", "Body") == "Title Body" and passage_text("", "Body") == "Body"


DOCS = [
    ("cat", "Cats", "Cats are small carnivorous mammals often kept as household pets."),
    ("bank", "Central banks", "The central bank raised interest rates to curb inflation."),
    ("volcano", "Volcanoes", "Lava and ash erupted from the volcano for three weeks."),
    ("code", "Python", "Python is a programming language popular in data science."),
    ("rain", "Weather", "Heavy rain caused the river to flood the valley."),
]


def test_cli_on_a_tiny_beir_folder(tmp_path):
    beir = write_beir(tmp_path / "tiny", [{"_id": i, "title": t, "text": x} for i, t, x in DOCS],
                      {"q1": "why did the central bank raise interest rates",
                       "q2": "volcanic eruption of lava and ash",
                       "q3": "which programming language for data science"},  # not judged
                      {"q1": {"bank": 1}, "q2": {"volcano": 1}}, split="test")
    result = CliRunner().invoke(app, ["eval", "retrieval", "--beir", str(beir),
                                      "--save-run", str(tmp_path / "r.run"),
                                      "--out", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout.strip())  # exactly one JSON object on stdout
    assert printed == json.loads((tmp_path / "m.json").read_text())
    assert printed["num_queries"] == 2 and printed["model"] == "embedded"
    assert printed["ndcg@10"] == pytest.approx(1.0)
    assert printed["mrr@10"] == pytest.approx(1.0)
    assert printed["recall@100"] == pytest.approx(1.0)
    assert printed["p@3"] == pytest.approx(1 / 3)
    lines = [ln.split() for ln in (tmp_path / "r.run").read_text().splitlines()]
    assert {ln[0] for ln in lines} == {"q1", "q2"}  # only judged queries are run
    assert all(len(ln) == 6 and ln[1] == "Q0" and ln[5] == "synthrag" for ln in lines)
    assert [ln[2] for ln in lines if ln[3] == "1"] == ["bank", "volcano"]
    assert sum(1 for ln in lines if ln[0] == "q1") == len(DOCS)  # k=100 > corpus: all docs


def _independent_metrics(run_file: Path, qrels_file: Path) -> dict:
    """NDCG@10, Recall@100, MRR@10, P@3 from a TREC run file, by the textbook formulas."""
    rels: dict[str, dict[str, int]] = defaultdict(dict)
    with open(qrels_file, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    for qid, did, score in rows[1:]:
        rels[qid][did] = int(score)
    ranked: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for line in run_file.read_text().splitlines():
        qid, _, did, rank, _, _ = line.split()
        ranked[qid].append((int(rank), did))
    sums = defaultdict(float)
    for qid, judged in rels.items():
        docs = [d for _, d in sorted(ranked.get(qid, []))]
        gains = [judged.get(d, 0) for d in docs]
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:10]))
        ideal = sorted(judged.values(), reverse=True)[:10]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        sums["ndcg@10"] += dcg / idcg if idcg else 0.0
        n_rel = sum(1 for g in judged.values() if g > 0)
        sums["recall@100"] += sum(1 for g in gains[:100] if g > 0) / n_rel
        first = next((i for i, g in enumerate(gains[:10]) if g > 0), None)
        sums["mrr@10"] += 0.0 if first is None else 1 / (first + 1)
        sums["p@3"] += sum(1 for g in gains[:3] if g > 0) / 3
    return {k: v / len(rels) for k, v in sums.items()} | {"num_queries": len(rels)}


def _scifact_slice(scifact: Path, out: Path, n_queries: int = 100, n_docs: int = 250) -> Path:
    """A real BEIR folder cut from SciFact train: the first judged queries, every document they
    judge, and other documents up to ``n_docs`` (the full corpus takes minutes to embed on 2 cores;
    `synthrag eval retrieval` on the whole folder is the same code)."""
    qrels = load_qrels(scifact, "train")
    keep_q = sorted(qrels)[:n_queries]
    needed = {d for q in keep_q for d in qrels[q]}
    corpus = []
    for batch in iter_corpus(scifact):
        for d in batch:
            if d["_id"] in needed or len(corpus) < n_docs - len(needed):
                corpus.append(d)
    queries = load_queries(scifact, "train")
    return write_beir(out, corpus, {q: queries[q] for q in keep_q}, {q: qrels[q] for q in keep_q}, split="train")


@pytest.mark.slow
def test_scifact_train_end_to_end(shared_data, tmp_path):
    scifact = _scifact_slice(shared_data / "scifact", tmp_path / "scifact")
    run_file, out = tmp_path / "scifact.run", tmp_path / "scifact.json"
    result = CliRunner().invoke(app, ["eval", "retrieval", "--model", "embedded",
                                      "--beir", str(scifact), "--split", "train",
                                      "--save-run", str(run_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout.strip())
    print(json.dumps(printed))
    expected = _independent_metrics(run_file, scifact / "qrels" / "train.tsv")
    assert printed["num_queries"] == expected["num_queries"] == len(load_qrels(scifact, "train")) == 100
    for key in ("ndcg@10", "recall@100", "mrr@10", "p@3"):
        assert printed[key] == pytest.approx(expected[key], abs=1e-6), key
    # MiniLM on SciFact is a reasonable retriever (full test split NDCG@10 = 0.645)
    assert 0.5 < printed["ndcg@10"] < 0.95 and printed["recall@100"] > 0.8
    per_query = defaultdict(int)
    for line in run_file.read_text().splitlines():
        per_query[line.split()[0]] += 1
    assert len(per_query) == expected["num_queries"] and max(per_query.values()) == 100
