"""Hard-negative mining from a vector index, with rank ranges and ANCE-style refresh.

For each query the index is searched (queries in batches: never a full query x corpus score
matrix), the query's positives are removed from the hit list, and the negatives are taken from
a rank range of what remains: ``[rank_start, rank_end)``, 0-based. Skipping the first few
(``rank_start=3``) avoids the unlabelled positives that sit at the very top; ``rank_end``
bounds how easy the negatives may get. ``num_negatives`` keeps the first n of the range (or a
seeded random n with ``sample=True``).

ANCE (Xiong et al., 2021) refreshes negatives with the model being trained:
:func:`refresh_negatives` re-encodes the passages with a checkpoint, rebuilds the index and
mines again with the same settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection, Iterator, Sequence

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.stages.index import ID_COLUMN, IndexConfig, VectorIndex, embed_passages


class MiningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank_start: int = Field(3, ge=0)  # 0-based rank among non-positive hits, inclusive
    rank_end: int = Field(30, ge=1)  # exclusive
    num_negatives: int | None = Field(None, ge=1)  # None: the whole range
    sample: bool = False  # random num_negatives from the range instead of the first ones
    query_batch_size: int = Field(1024, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _range(self):
        if self.rank_end <= self.rank_start:
            raise ValueError(f"rank_end ({self.rank_end}) must exceed rank_start "
                             f"({self.rank_start})")
        return self


def _pick(hits: list[tuple[str, float]], cfg: MiningConfig, rng: np.random.Generator
          ) -> list[tuple[str, float]]:
    window = hits[cfg.rank_start:cfg.rank_end]
    if cfg.num_negatives is None or len(window) <= cfg.num_negatives:
        return window
    if cfg.sample:
        keep = np.sort(rng.choice(len(window), size=cfg.num_negatives, replace=False))
        return [window[i] for i in keep]
    return window[:cfg.num_negatives]


def iter_mined(index: VectorIndex, query_vectors: np.ndarray,
               positives: Sequence[Collection[str]], config: MiningConfig | dict | None = None
               ) -> Iterator[tuple[list[str], list[float]]]:
    """Yield ``(negative_ids, scores)`` per query, best first, searching a batch at a time."""
    cfg = config if isinstance(config, MiningConfig) else MiningConfig(**(config or {}))
    if len(query_vectors) != len(positives):
        raise ValueError(f"{len(query_vectors)} queries but {len(positives)} positive sets")
    rng = np.random.default_rng(cfg.seed)
    step = cfg.query_batch_size
    for s in range(0, len(query_vectors), step):
        pos = [set(p) for p in positives[s:s + step]]
        depth = cfg.rank_end + max((len(p) for p in pos), default=0)
        ids, scores = index.search(query_vectors[s:s + step], depth)
        for row_ids, row_scores, p in zip(ids, scores, pos):
            hits = [(d, float(sc)) for d, sc in zip(row_ids, row_scores)
                    if d is not None and d not in p]
            chosen = _pick(hits, cfg, rng)
            yield [d for d, _ in chosen], [sc for _, sc in chosen]


def mine_hard_negatives(index: VectorIndex, query_vectors: np.ndarray,
                        positives: Sequence[Collection[str]],
                        config: MiningConfig | dict | None = None
                        ) -> tuple[list[list[str]], list[list[float]]]:
    """Hard negatives for query vectors: lists of ids and of their scores, one per query."""
    negs, scores = [], []
    for n, s in iter_mined(index, query_vectors, positives, config):
        negs.append(n)
        scores.append(s)
    return negs, scores


def mine_for_queries(index: VectorIndex, queries: Sequence[str],
                     positives: Sequence[Collection[str]], *, settings=None, model=None,
                     config: MiningConfig | dict | None = None
                     ) -> tuple[list[list[str]], list[list[float]]]:
    """Encode query texts (with the query prefix) a batch at a time and mine for them."""
    from actors.embedder import encode_texts

    cfg = config if isinstance(config, MiningConfig) else MiningConfig(**(config or {}))
    negs: list[list[str]] = []
    scores: list[list[float]] = []
    step = cfg.query_batch_size
    for s in range(0, len(queries), step):
        vecs = encode_texts(list(queries[s:s + step]), kind="query", settings=settings,
                            model=model)
        # one batch per call; a fresh seed offset keeps sampled picks reproducible per batch
        batch_cfg = cfg.model_copy(update={"seed": cfg.seed + s})
        n, sc = mine_hard_negatives(index, vecs, positives[s:s + step], batch_cfg)
        negs += n
        scores += sc
    return negs, scores


def refresh_negatives(checkpoint: str | Path, passages: str | Path, queries: Sequence[str],
                      positives: Sequence[Collection[str]], work_dir: str | Path, *,
                      settings=None, config: MiningConfig | dict | None = None,
                      index_config: IndexConfig | dict | None = None,
                      id_column: str = ID_COLUMN, text_columns: Sequence[str] = ("title", "text"),
                      use_ray: bool = False, **pool) -> tuple[list[list[str]], list[list[float]]]:
    """ANCE refresh: re-encode ``passages`` (Parquet) with ``checkpoint``, re-index, re-mine.

    ``checkpoint`` is a sentence-transformers directory (e.g. the retriever trainer's export).
    Embeddings and the index are written under ``work_dir`` (``embeddings/``, ``index/``).
    """
    from actors.embedder import EmbedderSettings

    base = settings if isinstance(settings, EmbedderSettings) else EmbedderSettings(
        **(settings or {}))
    s = base.model_copy(update={"model": str(checkpoint)})
    work = Path(work_dir)
    emb = embed_passages(passages, work / "embeddings", settings=s, id_column=id_column,
                         text_columns=text_columns, use_ray=use_ray, **pool)
    index = VectorIndex.build(emb, index_config)
    index.save(work / "index")
    return mine_for_queries(index, queries, positives, settings=s, config=config)


def negatives_table(query_ids: Sequence[str], queries: Sequence[str],
                    positives: Sequence[Sequence[str]], negatives: Sequence[Sequence[str]],
                    query_types: Sequence[str | None] | None = None) -> pa.Table:
    """Mined negatives as ``retrieval_lists`` rows: one per (query, positive), candidates are
    the negatives (label 0), to train contrastive retrievers from a run directory."""
    from pipelines.core.schema import RETRIEVAL_LISTS, to_table

    rows = []
    for i, (qid, q, pos, neg) in enumerate(zip(query_ids, queries, positives, negatives)):
        for p in pos:
            rows.append({"query_id": qid, "query": q, "positive": p, "candidates": list(neg),
                         "query_type": query_types[i] if query_types else None,
                         "labels": [0.0] * len(neg)})
    return to_table(rows, RETRIEVAL_LISTS)
