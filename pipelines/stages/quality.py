"""Chunk quality: send prose to the LLM stages, not API signatures, markup or navigation.

A cheap, explainable score per chunk, from five signals (each in [0, 1], each in the reject's
detail so a person can see why a chunk was dropped):

- ``words``: share of whitespace tokens that are words (two or more letters, trailing punctuation
  allowed), so tables of ``|``/``---`` rules, numbers and code score low;
- ``symbols``: share of non-space characters that are neither letters, digits nor ordinary
  punctuation (``|``, ``=``, ``{}``, ``<>``, ``#``, ``*``, ``_`` ...);
- ``repetition``: share of word 3-grams that repeat an earlier 3-gram of the chunk;
- ``boilerplate``: share of the chunk's characters on lines found in at least
  ``boilerplate_min_docs`` documents of the corpus (navigation, footers, "See help(type(self))
  for accurate signature.");
- ``sentences``: spaCy sentences of at least ``min_sentence_words`` words (from ingest).

score = words x (1 - symbols) x (1 - repetition) x (1 - boilerplate). A chunk is prose when each
signal is within its threshold and score >= ``min_score``; otherwise it is a reject
``low_content``. The chunks table is left whole (retrieval indexes every chunk); the kept ids are
the ``chunk_quality`` table, which :func:`seed_chunks` reads to pick what the LLM stages see:
with ``--limit N``, the N best-scoring prose chunks spread over documents (each document's best
first, round-robin), not the first N.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from pipelines.core.groups import DRIVER_MAX_ROWS, partitions, to_table
from pipelines.core.schema import REJECT_DETAIL, REJECT_REASON, stable_id

QUALITY = pa.schema([pa.field("chunk_id", pa.string(), nullable=False), pa.field("doc_id", pa.string(), nullable=False),
                     pa.field("score", pa.float64(), nullable=False)])
_STAGING = pa.schema(list(QUALITY) + [pa.field(REJECT_REASON, pa.string()), pa.field(REJECT_DETAIL, pa.string())])

_WORD = re.compile(r"^[(\"'\[]*[^\W\d_]{2,}(?:[-'][^\W\d_]+)*[)\"'\].,;:!?]*$")
_PLAIN = re.compile(r"[\w\s.,;:!?'\"()\[\]\-–—/%&$€£°+]")


class QualityConfig(BaseModel):
    """``ingest.quality``: thresholds measured on the shared corpora (benchmarks/RESULTS.md)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    min_words: float = Field(0.7, ge=0, le=1)  # share of tokens that are words
    max_symbols: float = Field(0.1, ge=0, le=1)
    max_repetition: float = Field(0.3, ge=0, le=1)
    max_boilerplate: float = Field(0.5, ge=0, le=1)
    boilerplate_min_docs: int = Field(3, ge=2)  # a line in this many documents is boilerplate
    boilerplate_min_chars: int = Field(12, ge=1)  # shorter lines ("Returns", "---") are not counted
    min_sentences: int = Field(1, ge=0)
    min_sentence_words: int = Field(5, ge=1)
    min_score: float = Field(0.6, ge=0, le=1)


def _lines(text: str, min_chars: int) -> list[str]:
    return [ln.strip() for ln in text.split("\n") if len(ln.strip()) >= min_chars]


def _key(line: str) -> int:
    """A stable 63-bit hash of a line (the same in every worker process, unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(line.encode(), digest_size=8).digest(), "little") >> 1


def line_keys(text: str, min_chars: int) -> list[int]:
    """Hashes of a document's distinct lines long enough to count as boilerplate candidates."""
    return sorted({_key(ln) for ln in _lines(text, min_chars)})


def signals(text: str, spans: list[dict], boilerplate: set[int], cfg: QualityConfig) -> dict:
    """The five signals and the score of one chunk (pure; the unit under test)."""
    tokens = text.split()
    n = max(len(tokens), 1)
    words = sum(bool(_WORD.match(t)) for t in tokens) / n
    chars = [c for c in text if not c.isspace()]
    symbols = sum(not _PLAIN.match(c) for c in chars) / max(len(chars), 1)
    lw = [t.lower().strip(".,;:!?\"'()[]") for t in tokens]
    grams = list(zip(lw, lw[1:], lw[2:]))
    repetition = (1 - len(set(grams)) / len(grams)) if len(grams) >= 3 else 0.0
    lines = _lines(text, cfg.boilerplate_min_chars)
    bp_chars = sum(len(ln) for ln in lines if _key(ln) in boilerplate)
    bp = bp_chars / max(len(text.strip()), 1)
    sentences = sum(len(text[s["start"]:s["end"]].split()) >= cfg.min_sentence_words for s in spans)
    score = words * (1 - symbols) * (1 - repetition) * (1 - bp)
    return {"words": round(words, 3), "symbols": round(symbols, 3), "repetition": round(repetition, 3),
            "boilerplate": round(bp, 3), "sentences": sentences, "score": round(score, 4)}


def failures(sig: dict, cfg: QualityConfig) -> list[str]:
    """Which thresholds a chunk's signals miss (empty: it is prose)."""
    out = []
    if sig["words"] < cfg.min_words:
        out.append(f"words<{cfg.min_words}")
    if sig["symbols"] > cfg.max_symbols:
        out.append(f"symbols>{cfg.max_symbols}")
    if sig["repetition"] > cfg.max_repetition:
        out.append(f"repetition>{cfg.max_repetition}")
    if sig["boilerplate"] > cfg.max_boilerplate:
        out.append(f"boilerplate>{cfg.max_boilerplate}")
    if sig["sentences"] < cfg.min_sentences:
        out.append(f"sentences<{cfg.min_sentences}")
    if sig["score"] < cfg.min_score:
        out.append(f"score<{cfg.min_score}")
    return out


def _doc_lines(batch: pa.Table, min_chars: int) -> pa.Table:
    keys, docs = [], []
    for doc_id, text in zip(batch.column("doc_id").to_pylist(), batch.column("text").to_pylist()):
        ks = line_keys(text or "", min_chars)
        keys += ks
        docs += [doc_id] * len(ks)
    return pa.table({"line": pa.array(keys, pa.int64()), "doc_id": pa.array(docs, pa.string())})


def boilerplate_lines(documents, cfg: QualityConfig, n_docs: int) -> set[int]:
    """Hashes of the lines found in at least ``boilerplate_min_docs`` documents: counted on the
    driver for a small corpus, with a Ray Data groupby for a large one (see ``pipelines.core.groups``)."""
    pairs = documents.select_columns(["doc_id", "text"]).map_batches(
        _doc_lines, batch_format="pyarrow", fn_kwargs={"min_chars": cfg.boilerplate_min_chars})
    if n_docs <= DRIVER_MAX_ROWS:
        table = to_table(pairs)
        if not table.num_rows:
            return set()
        counts = table.group_by("line").aggregate([("doc_id", "count")])
        common = counts.filter(pc.field("doc_id_count") >= cfg.boilerplate_min_docs)
        return set(common.column("line").to_pylist())
    counts = pairs.groupby("line", num_partitions=partitions(n_docs)).count()
    common = counts.filter(lambda r: r["count()"] >= cfg.boilerplate_min_docs)
    return {int(r["line"]) for r in common.iter_rows()}


def _score_batch(batch: pa.Table, boilerplate: set[int], cfg: dict) -> pa.Table:
    qc = QualityConfig(**cfg)
    rows = {"chunk_id": [], "doc_id": [], "score": [], REJECT_REASON: [], REJECT_DETAIL: []}
    for r in batch.to_pylist():
        sig = signals(r["text"], r["sentence_spans"], boilerplate, qc)
        bad = failures(sig, qc)
        rows["chunk_id"].append(r["chunk_id"])
        rows["doc_id"].append(r["doc_id"])
        rows["score"].append(sig["score"])
        rows[REJECT_REASON].append("low_content" if bad else None)
        rows[REJECT_DETAIL].append(json.dumps({**sig, "failed": bad}) if bad else None)
    return pa.Table.from_pydict(rows, schema=_STAGING)


def score_chunks(chunks, boilerplate: set[int], cfg: QualityConfig):
    """The ``quality`` stage's rows: every chunk with its score, low-content ones as rejects."""
    cols = ["chunk_id", "doc_id", "text", "sentence_spans"]
    return chunks.select_columns(cols).map_batches(
        _score_batch, batch_format="pyarrow", fn_kwargs={"boilerplate": boilerplate, "cfg": cfg.model_dump()})


def unscored(batch: pa.Table) -> pa.Table:
    """``ingest.quality.enabled: false``: every chunk kept, with score 1."""
    n = batch.num_rows
    return pa.table({"chunk_id": batch.column("chunk_id"), "doc_id": batch.column("doc_id"),
                     "score": pa.array([1.0] * n), REJECT_REASON: pa.nulls(n, pa.string()),
                     REJECT_DETAIL: pa.nulls(n, pa.string())}, schema=_STAGING)


def spread_best(rows: list[dict], n: int | None, seed: int) -> list[str]:
    """Up to ``n`` chunk ids: every document's best chunk first (best score first, ties broken by
    a seeded hash), then every document's second best, and so on."""
    by_doc: dict[str, list[dict]] = {}
    for r in rows:
        by_doc.setdefault(r["doc_id"], []).append(r)
    for rs in by_doc.values():
        rs.sort(key=lambda r: (-r["score"], stable_id(seed, r["chunk_id"])))
    picked: list[str] = []
    depth = 0
    while (n is None or len(picked) < n) and any(len(rs) > depth for rs in by_doc.values()):
        tier = sorted((rs[depth] for rs in by_doc.values() if len(rs) > depth),
                      key=lambda r: (-r["score"], stable_id(seed, r["chunk_id"])))
        picked += [r["chunk_id"] for r in tier]
        depth += 1
    return sorted(picked if n is None else picked[:n])


def seed_chunks(run, limit: int | None, seed: int) -> list[str]:
    """The chunk ids the LLM stages of a method start from (see the module docstring). A run
    ingested without the quality stage falls back to a seeded sample of every chunk."""
    if not run.has("chunk_quality"):
        return run.sample_keys("chunks", "chunk_id", limit, seed)
    return spread_best(run.read_arrow("chunk_quality").to_pylist(), limit, seed)


def reasons_summary(rejects: list[dict]) -> Counter:
    """Which thresholds the rejected chunks failed (for the stage record)."""
    return Counter(f for r in rejects for f in json.loads(r[REJECT_DETAIL])["failed"])
