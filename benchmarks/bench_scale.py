"""Scale: ingest + dedupe + embedding + index over a generated corpus of N passages.

    .venv/bin/python benchmarks/bench_scale.py --passages 100000
    .venv/bin/python benchmarks/bench_scale.py --passages 1000000

The corpus is real text (SciFact sentences when ../shared/data is present, else the bundled
examples) recombined with variation: each passage is 3-6 sentences drawn by a seeded RNG, with a
passage number, and ~2% exact duplicates and ~1% contained excerpts so dedupe has work to do.
It is written to disk as a stream (never held in memory). The stages are the pipelines' own
(ingest, then the ``embed`` and ``index`` stages every method uses), so rerunning with the same
``--workdir`` after a kill resumes like a real run: finished stages are skipped and embedding
continues from the rows already written. Prints seconds and rows per stage and the peak memory
per phase (ingest, embed + index) and overall: the driver's RSS, and the PSS of the driver and
every Ray process together (shared object-store pages counted once), sampled every second, so
the 100k and 1M runs show whether memory stays bounded as the corpus grows. The samples are also
written to ``WORKDIR/memory.csv`` and the peaks attributed to each stage by its start and length.

Embedding with the real model costs ~20 passages/s on 2 CPU cores (14 h for 1M), so
``--embed-model pipeline-cost`` swaps in MiniLM cut to its first layer and 32 tokens (same
tokenizer, same 384-d output, ~50x less compute): the embed and index stages then run at 1M here
and show what the *pipeline* costs (streaming, actors, writing, faiss) apart from the model.
Its vectors are not useful for retrieval; its throughput is not the model's.
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
    """Peak memory of this process (RSS) and of this process plus every Ray process together
    (PSS, so pages they share, like the object store, count once), sampled in a thread; peaks
    are kept per phase (``mem.phase = "embed"``) and overall."""

    def __init__(self, every_s: float = 1.0, csv: Path | None = None):
        self.every_s = every_s
        self.csv = csv  # samples are appended as they come, so a killed benchmark keeps them
        self.phase = "start"
        self.peaks: dict[str, dict[str, int]] = {}
        self.samples: list[tuple[float, str, int, int]] = []  # (unix time, phase, driver, all) MB
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> tuple[int, int]:
        me = psutil.Process()
        total = 0
        for p in psutil.process_iter(["name", "cmdline"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
                if p.pid == me.pid or "ray" in (p.info["name"] or "") or "ray::" in cmd or "/ray/" in cmd:
                    total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied, TypeError):
                continue
        return me.memory_info().rss, total

    def _run(self):
        while not self._stop.is_set():
            driver, total = self._sample()
            self.samples.append(sample := (time.time(), self.phase, driver >> 20, total >> 20))
            if self.csv is not None:
                with open(self.csv, "a") as f:
                    f.write("{:.1f},{},{},{}\n".format(*sample))
            for key in (self.phase, "all"):
                peak = self.peaks.setdefault(key, {"driver_rss_mb": 0, "all_ray_pss_mb": 0})
                peak["driver_rss_mb"] = max(peak["driver_rss_mb"], driver >> 20)
                peak["all_ray_pss_mb"] = max(peak["all_ray_pss_mb"], total >> 20)
            time.sleep(self.every_s)

    def __enter__(self):
        if self.csv is not None and not self.csv.exists():
            self.csv.write_text("unix_time,phase,driver_rss_mb,all_ray_pss_mb\n")
        elif self.csv is not None:  # a resumed benchmark: earlier stages' samples count too
            for line in self.csv.read_text().splitlines()[1:]:
                t, ph, d, a = line.split(",")
                self.samples.append((float(t), ph, int(d), int(a)))
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    def stage_peaks(self, stage: dict) -> dict[str, int] | None:
        """Peak memory while ``stage`` (a manifest record with ``started`` and ``seconds``) ran."""
        from datetime import datetime

        if not stage.get("started") or not stage.get("seconds"):
            return None
        t0 = datetime.fromisoformat(stage["started"]).timestamp()
        inside = [(d, a) for t, _, d, a in self.samples if t0 - 1 <= t <= t0 + stage["seconds"] + 1]
        if not inside:
            return None
        return {"driver_rss_mb": max(d for d, _ in inside), "all_ray_pss_mb": max(a for _, a in inside)}


def pipeline_cost_embedder(work: Path) -> Path:
    """MiniLM cut to its first transformer layer and 32 tokens, saved under ``work``: the embed
    stage's streaming, actor and write costs at ~50x less model compute (see the module doc)."""
    out = work / "pipeline-cost-embedder"
    if not (out / "modules.json").exists():  # in a child process: torch stays out of the driver
        import subprocess
        import sys

        subprocess.run([sys.executable, "-c", f"""
from actors.embedder import load_model
st = load_model("embedded", device="cpu")
bert = st[0].auto_model
bert.encoder.layer = bert.encoder.layer[:1]
bert.config.num_hidden_layers = 1
st.max_seq_length = 32
st.save({str(out)!r})
"""], check=True, cwd=REPO)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passages", type=int, default=100_000)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="rerun with the same folder to resume an interrupted benchmark")
    ap.add_argument("--embed-actors", type=int, default=2)
    ap.add_argument("--skip-embed", action="store_true")
    ap.add_argument("--embed-model", default="embedded",
                    help="'embedded' (MiniLM), a local sentence-transformers dir, or 'pipeline-cost'")
    args = ap.parse_args()

    from actors.embedder import EmbedderSettings
    from cluster.runtime import connect
    from pipelines.core.run import Run
    from pipelines.stages.index import IndexConfig, index_run_chunks
    from pipelines.stages.ingest import IngestConfig, ingest

    work = args.workdir or Path(tempfile.mkdtemp(prefix="scale-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.jsonl"
    t0 = time.perf_counter()
    done_marker = work / f"corpus.{args.passages}.done"
    if not done_marker.exists():  # the corpus is seeded: an interrupted benchmark reuses it
        write_corpus(corpus, args.passages)
        done_marker.touch()
    figures = {"passages": args.passages, "corpus_mb": round(corpus.stat().st_size / 2**20, 1),
               "generate_s": round(time.perf_counter() - t0, 1)}
    model = args.embed_model  # the cut-down model is built before memory is sampled
    if model == "pipeline-cost" and not args.skip_embed:
        model = str(pipeline_cost_embedder(work))
    connect()
    with PeakMemory(csv=work / "memory.csv") as mem:
        run = Run.open(work / "run", command="bench_scale", config={"passages": args.passages})
        mem.phase = "ingest"
        ingest(run, corpus, IngestConfig(splitter="regex"))
        if not args.skip_embed:
            mem.phase = "embed"
            index_run_chunks(run, EmbedderSettings(model=model), IndexConfig(), actors=(1, args.embed_actors))
        mem.phase = "end"
    stages = {s["name"]: s for s in run.manifest["stages"]}
    figures["stages"] = {n: {"s": round(s["seconds"], 1), "in": s["in"], "out": s["out"],
                             **({"rejected": s["rejected"]} if s["rejected"] else {}),
                             **({"resumed_rows": s["resumed_rows"]} if s.get("resumed_rows") else {}),
                             **({"kind": s["kind"]} if "kind" in s else {})}
                         for n, s in stages.items()}
    if "embed" in stages and stages["embed"]["seconds"]:
        done_here = stages["embed"]["out"] - stages["embed"].get("resumed_rows", 0)  # a resumed run skipped those
        figures["embed_rows_per_s"] = round(done_here / stages["embed"]["seconds"], 1)
    figures["peak_memory"] = mem.peaks
    for name, s in stages.items():  # a stage skipped by a resumed benchmark has no samples
        if (peak := mem.stage_peaks(s)) is not None:
            figures["stages"][name]["peak_memory"] = peak
    figures["embed_model"] = args.embed_model if not args.skip_embed else None
    (work / "figures.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
