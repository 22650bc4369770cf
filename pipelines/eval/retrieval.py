"""Retrieval evaluation: dense retrieval over a BEIR folder, metrics by ``pytrec_eval``.

The core is :func:`evaluate`, which takes a queries dict, a qrels dict and a ranking
(``{query_id: {doc_id: score}}``) and returns mean NDCG@10, Recall@100, MRR@10 and P@3 over
the queries judged in the qrels (a judged query missing from the ranking scores 0).
:func:`per_query_metrics` gives the same figures per query, for breakdowns by query kind.

Ordering follows trec_eval everywhere: score descending, ties broken by doc id descending.
The TREC run written by :func:`write_trec_run` lists documents in that order, so the ranks in
the file are the ranks the metrics saw; MRR@10 is trec_eval's ``recip_rank`` on each query's
top 10 in that order.

:func:`retrieve` embeds the corpus (title + text) batch by batch into Parquet embeddings, builds
a :class:`~pipelines.stages.index.VectorIndex`, encodes the queries and searches in batches.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from actors.embedder import EmbedderSettings, encode_texts, load_model
from pipelines.exports.beir import (
    count_corpus,
    iter_corpus,
    load_qrels,
    load_queries,
    passage_text,
)
from pipelines.stages.index import IndexConfig, VectorIndex, write_embeddings

Ranking = dict[str, dict[str, float]]

# Our metric name -> (pytrec_eval measure to request, key in its result, top-n the run is cut to)
_MEASURES = {
    "ndcg@10": ("ndcg_cut.10", "ndcg_cut_10", None),
    "recall@100": ("recall.100", "recall_100", None),
    "p@3": ("P.3", "P_3", None),
    "mrr@10": ("recip_rank", "recip_rank", 10),
}
METRICS = tuple(_MEASURES)


def _log(msg: str) -> None:
    print(f"[synthrag] {msg}", file=sys.stderr, flush=True)


def ordered(docs: Mapping[str, float]) -> list[tuple[str, float]]:
    """A query's hits in trec_eval order: score descending, then doc id descending."""
    return sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)


def per_query_metrics(qrels: Mapping[str, Mapping[str, int]],
                      ranking: Mapping[str, Mapping[str, float]],
                      metrics: tuple[str, ...] = METRICS) -> dict[str, dict[str, float]]:
    """``{query_id: {metric: value}}`` for every query in ``qrels`` (0 where nothing ranked)."""
    import pytrec_eval

    qrels = {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    out = {q: {m: 0.0 for m in metrics} for q in qrels}
    by_cut: dict[int | None, list[str]] = {}
    for m in metrics:
        by_cut.setdefault(_MEASURES[m][2], []).append(m)
    for cut, names in by_cut.items():
        run = {}
        for q in qrels:
            hits = ranking.get(q) or {}
            if cut is not None:
                hits = dict(ordered(hits)[:cut])
            if hits:
                run[q] = {d: float(s) for d, s in hits.items()}
        if not run:
            continue
        evaluator = pytrec_eval.RelevanceEvaluator(qrels, {_MEASURES[m][0] for m in names})
        for q, res in evaluator.evaluate(run).items():
            for m in names:
                out[q][m] = float(res[_MEASURES[m][1]])
    return out


def evaluate(queries: Mapping[str, str] | None, qrels: Mapping[str, Mapping[str, int]],
             ranking: Mapping[str, Mapping[str, float]],
             metrics: tuple[str, ...] = METRICS) -> dict:
    """Mean metrics over the queries judged in ``qrels`` (restricted to ``queries`` if given).

    Returns ``{"ndcg@10": .., "recall@100": .., "mrr@10": .., "p@3": .., "num_queries": n}``.
    """
    judged = {q: d for q, d in qrels.items() if queries is None or q in queries}
    per_q = per_query_metrics(judged, ranking, metrics)
    n = len(per_q)
    result: dict = {m: (sum(v[m] for v in per_q.values()) / n if n else 0.0) for m in metrics}
    result["num_queries"] = n
    return result


# ---------------------------------------------------------------------------- TREC run files
def write_trec_run(ranking: Mapping[str, Mapping[str, float]], path: str | Path,
                   tag: str = "synthrag") -> Path:
    """Write ``qid Q0 docid rank score tag`` lines, ranks from 1 in trec_eval order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for qid in sorted(ranking):
            for rank, (did, score) in enumerate(ordered(ranking[qid]), start=1):
                f.write(f"{qid} Q0 {did} {rank} {score:.8f} {tag}\n")
    tmp.replace(path)
    return path


def read_trec_run(path: str | Path) -> Ranking:
    run: Ranking = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5:
                run.setdefault(parts[0], {})[parts[2]] = float(parts[4])
    return run


# ---------------------------------------------------------------------------- dense retrieval
def retrieve(beir_dir: str | Path, queries: Mapping[str, str], *,
             settings: EmbedderSettings | None = None, k: int = 100,
             index_config: IndexConfig | None = None, corpus_batch: int = 1024,
             ignore_identical_ids: bool = True, work_dir: str | Path | None = None,
             model=None) -> Ranking:
    """Top-``k`` documents per query from the BEIR corpus, by a bi-encoder.

    The corpus is encoded ``corpus_batch`` documents at a time and written as Parquet
    embeddings under ``work_dir`` (a temporary folder by default), then indexed and searched.
    ``ignore_identical_ids`` drops a hit whose doc id equals the query id (BEIR's default).
    """
    settings = settings or EmbedderSettings()
    st = model if model is not None else load_model(
        settings.model, device=settings.device, fp16=settings.fp16,
        max_seq_length=settings.max_seq_length)
    with tempfile.TemporaryDirectory(prefix="synthrag-eval-") as tmp:
        emb_dir = Path(work_dir or tmp) / "embeddings"
        total, done, t0 = count_corpus(beir_dir), 0, time.perf_counter()

        def batches():
            nonlocal done
            for docs in iter_corpus(beir_dir, corpus_batch):
                texts = [passage_text(d["title"], d["text"]) for d in docs]
                yield [d["_id"] for d in docs], encode_texts(texts, kind="passage",
                                                             settings=settings, model=st)
                done += len(docs)
                _log(f"encoded {done}/{total} documents ({time.perf_counter() - t0:.0f}s)")

        write_embeddings(batches(), emb_dir)
        index = VectorIndex.build(emb_dir, index_config)
    qids = list(queries)
    qvecs = encode_texts([queries[q] for q in qids], kind="query", settings=settings, model=st)
    ids, scores = index.search(qvecs, k + 1 if ignore_identical_ids else k)
    ranking: Ranking = {}
    for qid, row_ids, row_scores in zip(qids, ids, scores):
        hits = {d: float(s) for d, s in zip(row_ids, row_scores)
                if d is not None and np.isfinite(s) and not (ignore_identical_ids and d == qid)}
        ranking[qid] = dict(ordered(hits)[:k])
    _log(f"searched {len(qids)} queries in {len(index)} documents ({index.kind} index, "
         f"{time.perf_counter() - t0:.0f}s in all)")
    return ranking


def evaluate_beir(beir_dir: str | Path, *, split: str = "test",
                  settings: EmbedderSettings | None = None, k: int = 100,
                  index_config: IndexConfig | None = None, model=None
                  ) -> tuple[dict, Ranking]:
    """Retrieve for the split's judged queries and score them; returns (metrics, ranking)."""
    qrels = load_qrels(beir_dir, split)
    all_queries = load_queries(beir_dir, split)
    queries = {q: all_queries[q] for q in qrels if q in all_queries}
    if len(queries) < len(qrels):
        _log(f"{len(qrels) - len(queries)} judged queries have no text; they score 0")
    ranking = retrieve(beir_dir, queries, settings=settings, k=k, index_config=index_config,
                       model=model)
    metrics = evaluate(None, qrels, ranking)
    return metrics, ranking


RUN_SPLITS = ("original", "rewrite", "partial")


def evaluate_run(run_dir: str | Path, *, settings: EmbedderSettings | None = None, k: int = 100,
                 index_config: IndexConfig | None = None, model=None) -> tuple[dict, Ranking]:
    """RAGSynth's retrieval robustness on a run's own data (``RUN/exports/beir``): the corpus is
    encoded once and every query type is scored on its own qrels split, so original queries,
    their rewrites and the partial-clue queries can be compared (P@3 above all)."""
    beir_dir = Path(run_dir) / "exports" / "beir"
    if not (beir_dir / "corpus.jsonl").is_file():
        raise FileNotFoundError(f"{beir_dir} not found: run `synthrag run ragsynth` (ragsynth.export.lists) first")
    queries = load_queries(beir_dir)
    ranking = retrieve(beir_dir, queries, settings=settings, k=k, index_config=index_config,
                       ignore_identical_ids=False, model=model)
    out: dict = {}
    for split in RUN_SPLITS:
        qrels = load_qrels(beir_dir, split)
        if qrels:
            out[split] = evaluate(None, qrels, ranking)
    return out, ranking
