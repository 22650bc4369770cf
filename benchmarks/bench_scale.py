"""Scale: ingest + dedupe + embedding + index over a generated corpus of N passages.

    .venv/bin/python benchmarks/bench_scale.py --passages 100000
    .venv/bin/python benchmarks/bench_scale.py --passages 1000000

The corpus is real text (SciFact sentences when ../shared/data is present, else the bundled
examples) recombined with variation: each passage is 3-6 sentences drawn by a seeded RNG, with a
passage number, and ~2% exact duplicates and ~1% contained excerpts so dedupe has work to do.
It is written to disk as a stream (never held in memory). Prints seconds per stage and the peak
resident memory of the driver and of all Ray processes together, sampled every 0.5 s, so the
100k and 1M runs show whether memory stays bounded as the corpus grows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import tempfile
import threading
import time
from pathlib import Path

import psutil

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SCIFACT = REPO.parent / "shared" / "data" / "scifact" / "corpus.jsonl"


def sentences() -> list[str]:
    if SCIFACT.exists():
        texts = [json.loads(line)["text"] for line in open(SCIFACT)]
    else:
        texts = [p.read_text() for p in (REPO / "examples" / "corpus").iterdir()]
    out = [s.strip() for t in texts for s in re.split(r"(?<=[.!?])\s+", t)]
    return [s for s in out if 40 <= len(s) <= 300]


def write_corpus(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    pool = sentences()
    recent: list[str] = []
    with open(path, "w") as f:
        for i in range(n):
            r = rng.random()
            if r < 0.02 and recent:
                text = rng.choice(recent)  # exact duplicate
            elif r < 0.03 and recent:
                parts = rng.choice(recent).split(". ")
                text = ". ".join(parts[: max(1, len(parts) // 2)])  # contained excerpt
            else:
                text = f"Passage {i}. " + " ".join(rng.choice(pool) for _ in range(rng.randint(3, 6)))
            recent = (recent + [text])[-1000:]
            f.write(json.dumps({"_id": f"p{i}", "title": "", "text": text}) + "\n")


class PeakMemory:
    """Peak RSS of this process and of every Ray process, sampled in a thread."""

    def __init__(self):
        self.driver = self.total = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in psutil.process_iter(["name", "cmdline", "memory_info"]):
                try:
                    cmd = " ".join(p.info["cmdline"] or [])
                    if p.pid == me.pid or "ray" in (p.info["name"] or "") or "ray::" in cmd or "/ray/" in cmd:
                        total += p.info["memory_info"].rss
                except (psutil.NoSuchProcess, psutil.AccessDenied, TypeError):
                    continue
            self.driver = max(self.driver, me.memory_info().rss)
            self.total = max(self.total, total)
            time.sleep(0.5)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passages", type=int, default=100_000)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--embed-actors", type=int, default=2)
    ap.add_argument("--skip-embed", action="store_true")
    args = ap.parse_args()

    from cluster.runtime import connect
    from pipelines.index import IndexConfig, VectorIndex, embed_passages
    from pipelines.ingest import IngestConfig, ingest
    from pipelines.rundir import Run

    work = args.workdir or Path(tempfile.mkdtemp(prefix="scale-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.jsonl"
    t0 = time.perf_counter()
    write_corpus(corpus, args.passages)
    figures = {"passages": args.passages, "corpus_mb": round(corpus.stat().st_size / 2**20, 1),
               "generate_s": round(time.perf_counter() - t0, 1)}
    connect()
    with PeakMemory() as mem:
        run = Run.open(work / "run", command="bench_scale", config={})
        t = time.perf_counter()
        ingest(run, corpus, IngestConfig(splitter="regex"))
        figures["ingest_s"] = round(time.perf_counter() - t, 1)
        figures["stages"] = {s["name"]: {"s": s["seconds"], "in": s["in"], "out": s["out"], "rejected": s["rejected"]}
                             for s in run.manifest["stages"]}
        if not args.skip_embed:
            t = time.perf_counter()
            emb = embed_passages(run.path("chunks"), run.path("embeddings"), id_column="chunk_id",
                                 text_columns=("text",), use_ray=True, min_actors=1, max_actors=args.embed_actors)
            figures["embed_s"] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
            index = VectorIndex.build(emb, IndexConfig(), id_column="chunk_id")
            index.save(run.path("index"))
            figures["index_s"] = round(time.perf_counter() - t, 1)
            figures["index_kind"] = index.kind
    figures["peak_rss_driver_mb"] = round(mem.driver / 2**20)
    figures["peak_rss_all_ray_mb"] = round(mem.total / 2**20)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
