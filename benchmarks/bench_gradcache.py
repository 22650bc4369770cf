"""GradCache step time and peak memory vs the uncached loss and vs sentence-transformers'
CachedMultipleNegativesRankingLoss, at growing batch sizes, printed as ratios.

Peak memory: every (method, batch size) runs one step in a fresh subprocess; on CPU the figure is
the growth of the process's peak RSS (ru_maxrss) during the step over the peak after loading the
model, on CUDA ``torch.cuda.max_memory_allocated`` over the step. Step time: one subprocess per
batch size runs the methods interleaved, round by round (fair under a fluctuating load), and
reports each method's median over ``--repeats`` rounds after a warm-up round.

Methods, all on the same model, data and contrastive objective (each query against every
positive and hard negative in the batch, temperature 0.05 = sentence-transformers' scale 20):

- ``uncached``: one forward of all texts with a graph, the loss, backward;
- ``gradcache``: training/gradcache.py, chunks of ``--chunk-size`` texts;
- ``st_cached_mnrl``: sentence-transformers' CachedMultipleNegativesRankingLoss,
  ``mini_batch_size = --chunk-size``.

    .venv/bin/python benchmarks/bench_gradcache.py --batches 8 16 32 64 --negatives 3

Texts are SciFact queries and abstracts when ../shared/data/scifact exists, else generated.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCIFACT = REPO.parent / "shared" / "data" / "scifact"
METHODS = ["uncached", "gradcache", "st_cached_mnrl"]


def texts(batch: int, negatives: int) -> tuple[list[str], list[list[str]]]:
    """``batch`` queries and, for each, a positive and ``negatives`` other passages."""
    need = batch * (1 + negatives)
    if (SCIFACT / "corpus.jsonl").exists():
        with open(SCIFACT / "corpus.jsonl") as f:
            docs = [json.loads(line) for _, line in zip(range(need), f)]
        with open(SCIFACT / "queries_train.jsonl") as f:
            queries = [json.loads(line)["text"] for _, line in zip(range(batch), f)]
        passages = [f"{d['title']}. {d['text']}" for d in docs]
    else:
        words = "cell protein gene tumour receptor signal immune dose trial cohort risk".split()
        passages = [" ".join(words[(i * 7 + j) % len(words)] for j in range(120)) for i in range(need)]
        queries = [" ".join(words[(i + j) % len(words)] for j in range(12)) for i in range(batch)]
    queries = (queries * (batch // max(1, len(queries)) + 1))[:batch]
    n = 1 + negatives
    return queries, [passages[i * n : (i + 1) * n] for i in range(batch)]


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def build(model_path: str, batch: int, negatives: int, chunk: int, max_length: int,
          threads: int):
    """The model, and one training-step function per method on the same batch."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
    )

    from training.gradcache import GradCache, TextBatch, full_batch_loss
    from training.losses import ContrastiveLoss

    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SentenceTransformer(model_path, device=device)
    model.max_seq_length = max_length
    model.train()
    queries, passages = texts(batch, negatives)
    n = 1 + negatives
    tb = TextBatch(queries=queries, passages=passages,
                   mask=torch.ones(batch, n, dtype=torch.bool),
                   passage_ids=torch.arange(batch * n).reshape(batch, n))
    loss_fn = ContrastiveLoss(tau=0.05)
    gc = GradCache(model, loss_fn, chunk_size=chunk)
    st_loss = CachedMultipleNegativesRankingLoss(model, scale=1 / 0.05, mini_batch_size=chunk)
    columns = [queries] + [[p[j] for p in passages] for j in range(n)]

    def st_step():
        features = [model.preprocess(col) for col in columns]
        features = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in f.items()}
                    for f in features]
        st_loss(features, None).backward()

    steps = {"uncached": lambda: full_batch_loss(model, loss_fn, tb).backward(),
             "gradcache": lambda: gc.step(tb), "st_cached_mnrl": st_step}
    return model, steps, device


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def peak_one(method: str, batch: int, args) -> dict:
    """Peak memory of one step of ``method`` (run in a fresh process)."""
    import torch

    model, steps, device = build(args.model, batch, args.negatives, args.chunk_size,
                                 args.max_length, args.threads)
    with torch.no_grad():
        model.encode(["warm up"])
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _peak_bytes()
    model.zero_grad(set_to_none=True)
    steps[method]()
    _sync(device)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else _peak_bytes()) - base
    return {"method": method, "batch": batch, "peak_mb": peak / 2**20, "device": device}


def time_all(batch: int, args) -> dict:
    """Median step time per method, the methods interleaved round by round (fair under a
    fluctuating load); one warm-up step each first."""
    model, steps, device = build(args.model, batch, args.negatives, args.chunk_size,
                                 args.max_length, args.threads)
    times = {m: [] for m in args.methods}
    for rnd in range(args.repeats + 1):
        for m in args.methods:
            model.zero_grad(set_to_none=True)
            _sync(device)
            t0 = time.perf_counter()
            steps[m]()
            _sync(device)
            if rnd:
                times[m].append(time.perf_counter() - t0)
    return {m: statistics.median(t) for m, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--negatives", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2)))
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:  # child process: one measurement, printed as JSON
        kind, rest = args.one.split("=")
        if kind == "peak":
            method, batch = rest.split(":")
            out = peak_one(method, int(batch), args)
        else:
            out = time_all(int(rest), args)
        print("RESULT " + json.dumps(out), flush=True)
        return

    from actors.models import resolve_model

    model = str(resolve_model(args.model, "embedder"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"model {model}\nnegatives {args.negatives}, chunk {args.chunk_size} texts, "
          f"max_length {args.max_length}, threads {args.threads}, repeats {args.repeats}",
          flush=True)
    rows = {}

    def child(spec: str):
        cmd = [sys.executable, __file__, "--one", spec, "--model", model,
               "--negatives", str(args.negatives), "--chunk-size", str(args.chunk_size),
               "--repeats", str(args.repeats), "--max-length", str(args.max_length),
               "--threads", str(args.threads), "--methods", *args.methods]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            print(f"{spec} failed:\n{proc.stderr[-2000:]}", flush=True)
        return None if line is None else json.loads(line[7:])

    for batch in args.batches:
        timing = child(f"time={batch}") or {}
        for method in args.methods:
            r = child(f"peak={method}:{batch}")
            if r is None or method not in timing:
                continue
            r.update(seconds=timing[method], texts=batch * (1 + args.negatives))
            rows[method, batch] = r
            print(f"  {method:15s} batch {batch:5d} ({r['texts']:5d} texts): "
                  f"{r['seconds']:7.2f} s/step, peak +{r['peak_mb']:8.1f} MB ({r['device']})",
                  flush=True)

    print("\nratios (gradcache / other): time, peak memory")
    print(f"{'batch':>6} {'vs uncached':>22} {'vs st CachedMNRL':>22}")
    for batch in args.batches:
        g = rows.get(("gradcache", batch))
        if not g:
            continue
        cells = []
        for other in ("uncached", "st_cached_mnrl"):
            o = rows.get((other, batch))
            cells.append(f"{g['seconds'] / o['seconds']:6.2f}x {g['peak_mb'] / max(o['peak_mb'], 1e-9):6.2f}x"
                         if o else "n/a")
        print(f"{batch:>6} {cells[0]:>22} {cells[1]:>22}")
    if args.json:
        args.json.write_text(json.dumps(list(rows.values()), indent=1))


if __name__ == "__main__":
    main()
