"""The embed stage next to bare ``SentenceTransformer.encode`` on the same passages.

    .venv/bin/python benchmarks/bench_embed_stage.py [--passages 2000] [--max-seq-length 256]

Passages are SciFact abstracts chunked by synthrag's ingest (title + text, as the stage embeds
them). Rows, in one run, each after a warm-up:

* bare encode: the embedded MiniLM in this process, all cores, ``encode(batch_size=64)``;
* the stage path (``embed_passages(use_ray=True)``: Ray Data reads the chunks, an actor pool
  embeds blocks, the vectors are written to Parquet), for the pool shapes given in ``--pools``
  (``actors x CPUs each``), model load excluded by a warm-up run of the same shape;
* the same passages as short texts (their first sentence), to show how much of the gap between
  "~340 sentences/s" and "~20 passages/s" is text length.

Prints passages/s and the stage / bare ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SCIFACT = REPO.parent / "shared" / "data" / "scifact" / "corpus.jsonl"


def chunks(n: int, tmp: Path) -> Path:
    """``n`` chunks of SciFact abstracts, cut as the ingest stage cuts them (~200 tokens)."""
    from actors.models import load_spacy

    nlp = load_spacy(sentences_only=True)
    rows = []
    with open(SCIFACT) as f:
        for line in f:
            d = json.loads(line)
            sents = [s.text for s in nlp(d["text"]).sents]
            for k in range(0, len(sents), 6):
                rows.append({"chunk_id": f"{d['_id']}#c{k}", "title": d.get("title", ""),
                             "text": " ".join(sents[k:k + 6])})
            if len(rows) >= n:
                break
    path = tmp / "chunks"
    path.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[:n]), path / "part-0.parquet")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--passages", type=int, default=2000)
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--pools", default="1x2,2x1", help="actor pool shapes: ACTORSxCPUS, comma separated")
    a = ap.parse_args()

    import torch

    from actors.embedder import EmbedderSettings, encode_texts, load_model
    from cluster.runtime import connect
    from pipelines.stages.index import _joined_text, embed_passages

    tmp = Path(tempfile.mkdtemp(prefix="bench_embed_stage_"))
    src = chunks(a.passages, tmp)
    table = pq.read_table(src)
    texts = _joined_text(table, ("title", "text"))
    settings = EmbedderSettings(max_seq_length=a.max_seq_length)
    model = load_model(settings.model, max_seq_length=a.max_seq_length)
    tokens = [len(model.tokenizer(t, truncation=True, max_length=a.max_seq_length)["input_ids"]) for t in texts]
    print(f"{len(texts)} SciFact chunks, {sum(tokens) / len(tokens):.0f} tokens on average (max_seq_length "
          f"{a.max_seq_length}), {os.cpu_count()} cores", flush=True)

    rows = []
    torch.set_num_threads(os.cpu_count() or 1)
    encode_texts(texts[:64], settings=settings, model=model)  # warm-up
    t0 = time.perf_counter()
    encode_texts(texts, settings=settings, model=model)
    bare = len(texts) / (time.perf_counter() - t0)
    rows.append(("bare SentenceTransformer.encode", bare))
    first = [t.split(". ")[0][:120] for t in texts]
    t0 = time.perf_counter()
    encode_texts(first, settings=settings, model=model)
    rows.append(("bare encode, first sentence only (short texts)", len(first) / (time.perf_counter() - t0)))
    del model

    small = tmp / "small"
    small.mkdir()
    pq.write_table(table.slice(0, 16), small / "part-0.parquet")
    connect(num_cpus=max(4, os.cpu_count() or 1))
    for shape in a.pools.split(","):
        actors, cpus = (int(x) for x in shape.split("x"))
        kw = dict(settings=settings, id_column="chunk_id", text_columns=("title", "text"), use_ray=True,
                  min_actors=actors, max_actors=actors, cpus_per_actor=cpus)
        t0 = time.perf_counter()  # a pool starts per call: time it on 16 rows, then on all
        embed_passages(small, tmp / f"start-{shape}", **kw)
        start = time.perf_counter() - t0
        t0 = time.perf_counter()
        embed_passages(src, tmp / f"emb-{shape}", **kw)
        total = time.perf_counter() - t0
        rows.append((f"embed stage, {actors} actor(s) x {cpus} CPU, start-up {start:.1f} s excluded",
                     (len(texts) - 16) / (total - start)))
        rows.append((f"embed stage, {actors} actor(s) x {cpus} CPU, start-up included", len(texts) / total))

    print(f"\n| path | passages/s | / bare |\n|---|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} | {rate / bare:.2f} |")


if __name__ == "__main__":
    main()
