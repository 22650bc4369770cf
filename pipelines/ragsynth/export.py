"""RAGSynth exports: retriever training lists, a BEIR folder, generator SFT records.

- ``RUN/retrieval_lists/``: one row per (query, positive chunk) with ANCE-style negatives mined
  from the run's index (the query's other positives never among them), for
  ``synthrag train retriever --data RUN --loss contrastive``. Queries are the originals, their
  rewrites and the partial-clue queries of completeness variants (whose positives are only the
  chunks that answer them); ``query_type`` says which.
- ``RUN/exports/beir/``: the same queries as a BEIR folder over the run's chunks, one qrels
  split per query type (``original``, ``rewrite``, ``partial``), for ``synthrag eval retrieval``.
- ``RUN/exports/sft_ragsynth.jsonl``: a chat record per example. The context holds the chunks
  available to the generator (all of them, some, or none for a refusal) plus retrieved but
  irrelevant chunks, sentences numbered; the assistant answer cites them as ``[n]``.
  ``sentence_ids`` maps the numbers back, which is how ``synthrag eval generator`` reads the
  citations of a model's answers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipelines.core.schema import stable_id

SYSTEM = ("Answer the question using only the documents below. After each sentence of your answer, "
          "cite the numbers of the sentences it uses in brackets, like [2]. If the documents answer only "
          "part of the question, answer that part and say what is missing. If they do not answer it at "
          "all, say that you cannot answer.")


def retrieval_queries(examples: list[dict]) -> list[dict]:
    """Queries with their positives and type, deduplicated by (type, text)."""
    out, seen = [], set()
    for ex in examples:
        kind = ex.get("variant_kind") or ""
        meta = json.loads(ex["meta"]) if ex.get("meta") else {}
        if not kind:
            qtype, query, positives = "original", ex["query"], ex["positives"]
        elif kind.startswith("rewrite"):
            qtype, query, positives = "rewrite", ex["query"], ex["positives"]
        elif kind == "partial" and meta.get("partial_question"):
            qtype, query, positives = "partial", meta["partial_question"], ex["references"]
        else:
            continue
        if not positives or (qtype, query) in seen:
            continue
        seen.add((qtype, query))
        out.append({"query_id": stable_id("ragsynth-query", qtype, query), "query": query, "query_type": qtype,
                    "positives": list(positives), "example_id": ex["example_id"]})
    return out


def lists_rows(queries: list[dict], negatives: list[list[str]], k: int) -> list[dict]:
    rows = []
    for q, negs in zip(queries, negatives):
        for p in q["positives"]:
            cands = [p] + [n for n in negs if n not in q["positives"]][:k]
            rows.append({"query_id": stable_id(q["query_id"], p), "query": q["query"], "query_type": q["query_type"],
                         "positive": p, "candidates": cands, "teacher_scores": None,
                         "false_negative": [False] * len(cands), "labels": [1.0] + [0.0] * (len(cands) - 1)})
    return rows


def mine(run, queries: list[dict], cfg) -> list[list[str]]:
    """Hard negatives per query from the run's index, positives excluded."""
    from actors.embedder import load_model
    from pipelines.stages.index import VectorIndex
    from pipelines.stages.mining import mine_for_queries

    if not queries:
        return []
    index = VectorIndex.load(run.path("index"))
    model = load_model(cfg.embedder.model, device=cfg.embedder.device)
    negs, _ = mine_for_queries(index, [q["query"] for q in queries], [q["positives"] for q in queries],
                               settings=cfg.embedder, model=model, config=cfg.mining)
    return negs


def write_beir(run, queries: list[dict]) -> Path:
    """``RUN/exports/beir/``: corpus.jsonl (chunks), queries.jsonl, qrels/<query_type>.tsv."""
    out = run.path("exports") / "beir"
    tmp = out.with_name("beir.tmp")
    (tmp / "qrels").mkdir(parents=True, exist_ok=True)
    with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as f:
        for b in pads.dataset(run.path("chunks"), format="parquet").to_batches(columns=["chunk_id", "title", "text"]):
            for r in b.to_pylist():
                f.write(json.dumps({"_id": r["chunk_id"], "title": r["title"] or "", "text": r["text"]},
                                   ensure_ascii=False) + "\n")
    with open(tmp / "queries.jsonl", "w", encoding="utf-8") as f:
        for q in queries:
            f.write(json.dumps({"_id": q["query_id"], "text": q["query"],
                                "metadata": {"query_type": q["query_type"], "example_id": q["example_id"]}},
                               ensure_ascii=False) + "\n")
    for qtype in ("original", "rewrite", "partial"):
        with open(tmp / "qrels" / f"{qtype}.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for q in queries:
                if q["query_type"] == qtype:
                    for p in q["positives"]:
                        f.write(f"{q['query_id']}\t{p}\t1\n")
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


# ----------------------------------------------------------------------------- SFT records
def _chunks(run, ids: set[str]) -> dict[str, dict]:
    if not ids:
        return {}
    t = pads.dataset(run.path("chunks"), format="parquet").to_table(
        columns=["chunk_id", "title", "text", "sentences", "sentence_spans"],
        filter=pc.field("chunk_id").isin(sorted(ids)))
    return {r["chunk_id"]: r for r in t.to_pylist()}


def sft_record(ex: dict, chunks: dict[str, dict], distractors: list[str], seed: int) -> dict:
    """The chat record of one example; see the module docstring."""
    meta = json.loads(ex["meta"]) if ex.get("meta") else {}
    context = list(dict.fromkeys(list(ex["references"] or []) + [d for d in distractors if d in chunks]))
    context = sorted(context, key=lambda c: stable_id(seed, ex["example_id"], c))
    lines, numbering = [], []
    for i, cid in enumerate(context, start=1):
        ch = chunks[cid]
        lines.append(f"[Document {i}]" + (f" {ch['title']}" if ch["title"] else ""))
        for sid, span in zip(ch["sentences"], ch["sentence_spans"]):
            numbering.append(sid)
            lines.append(f"[{len(numbering)}] {ch['text'][span['start']:span['end']].strip()}")
        lines.append("")
    number = {sid: i for i, sid in enumerate(numbering, start=1)}
    parts = []
    for s in meta.get("answer_sentences") or []:
        marks = "".join(f"[{number[sid]}]" for sid in s["sentence_ids"] if sid in number)
        parts.append(f"{s['text']} {marks}".strip())
    if ex.get("variant_kind") == "partial" and meta.get("missing"):
        parts.append(meta["missing"])
    answer = " ".join(parts) if parts else ex["answer"]
    docs = "\n".join(lines).strip() or "(no documents were retrieved)"
    user = f"Documents:\n\n{docs}\n\nQuestion: {ex['query']}"
    base = ex.get("variant_of") or ex["example_id"]
    return {"id": ex["example_id"], "messages": [{"role": "system", "content": SYSTEM},
                                                 {"role": "user", "content": user},
                                                 {"role": "assistant", "content": answer}],
            "sentence_ids": numbering, "task": ex["task"], "variant_kind": ex.get("variant_kind") or "full",
            "answer_source": ex.get("answer_source"),
            "split": "dev" if int(stable_id("split", base), 16) % 10 == 0 else "train"}


def write_sft(run, examples: list[dict], distractors: dict[str, list[str]], seed: int) -> tuple[Path, dict]:
    out = run.path("exports") / "sft_ragsynth.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    needed = {c for ex in examples for c in (ex["references"] or [])} | {c for d in distractors.values() for c in d}
    chunks = _chunks(run, needed)
    counts: dict[str, int] = {}
    tmp = out.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for ex in examples:
            rec = sft_record(ex, chunks, distractors.get(ex.get("variant_of") or ex["example_id"], []), seed)
            counts[rec["variant_kind"]] = counts.get(rec["variant_kind"], 0) + 1
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    return out, counts


def write_reference_answers(run, examples: list[dict]) -> Path:
    """The run's own answers in the ``--answers`` format of ``synthrag eval generator``."""
    out = run.path("exports") / "ragsynth_reference_answers.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps({"example_id": ex["example_id"], "answer": ex["answer"],
                                "citations": [c["sentence_id"] for c in ex["citations"]]}, ensure_ascii=False) + "\n")
    return out
