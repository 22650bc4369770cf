"""Embedding throughput and index build/search speed and recall, printed as figures.

    .venv/bin/python benchmarks/bench_embed_index.py [--n 100000] [--dim 384] [--texts 512]

* encoder: sentences/s of the embedded MiniLM on short and on abstract-length texts;
* index: build seconds, queries/s and recall@10 against exact search for flat, IVF and HNSW
  on ``n`` random clustered unit vectors, built from Parquet in streamed shards.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bench_encoder(n_texts: int) -> None:
    from actors.embedder import encode_texts

    encode_texts(["warm up"])
    short = [f"Sentence number {i} about a topic of some interest." for i in range(n_texts)]
    long = [" ".join(f"word{j} of abstract {i}" for j in range(60)) for i in range(n_texts // 4)]
    for name, texts in (("short sentences", short), ("abstract-length texts", long)):
        t0 = time.perf_counter()
        encode_texts(texts)
        dt = time.perf_counter() - t0
        print(f"encoder  {name:<22} {len(texts) / dt:8.1f} texts/s  ({len(texts)} in {dt:.1f}s)")


def bench_index(n: int, dim: int, n_queries: int = 1000) -> None:
    from pipelines.stages.index import VectorIndex, write_embeddings

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(256, dim)).astype(np.float32)

    def batches():
        for s in range(0, n, 50_000):
            m = min(50_000, n - s)
            x = centres[rng.integers(0, 256, m)] + 0.5 * rng.normal(size=(m, dim))
            x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
            yield [f"c{s + i}" for i in range(m)], x

    q = centres[rng.integers(0, 256, n_queries)] + 0.5 * rng.normal(size=(n_queries, dim))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        emb = write_embeddings(batches(), Path(tmp) / "embeddings")
        exact_ids = None
        for kind in ("flat", "ivf", "hnsw"):
            t0 = time.perf_counter()
            index = VectorIndex.build(emb, {"kind": kind})
            build = time.perf_counter() - t0
            t0 = time.perf_counter()
            ids, _ = index.search(q, 10)
            search = time.perf_counter() - t0
            if exact_ids is None:
                exact_ids = ids
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact_ids)])
            print(f"index    {kind:<5} n={n:<8} build {build:7.1f}s  search "
                  f"{n_queries / search:9.0f} q/s  recall@10 vs exact {recall:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--texts", type=int, default=512)
    args = ap.parse_args()
    bench_encoder(args.texts)
    bench_index(args.n, args.dim)


if __name__ == "__main__":
    main()
