"""The teacher under load: N requests from C concurrent HTTP clients against `synthrag serve
teacher` on loopback, with bad requests mixed in, next to the same pairs scored in-process.

    .venv/bin/python benchmarks/bench_teacher_load.py [--requests 1000] [--clients 32]
        [--passages 4] [--chars 300] [--model DIR] [--out teacher_load.json]

The default model is a cross-encoder built here from the embedded all-MiniLM-L6-v2 weights with
a fresh one-logit head (the shape and cost of ms-marco-MiniLM-L-6-v2, the usual small reranker;
its scores mean nothing, the load figures are what this measures). ``--model embedded`` loads
the LLM judge instead (~1.5 pairs/s on 2 cores: use a few dozen requests).

Prints throughput (requests/s, pairs/s), latency p50/p90/p99, errors by status, the Serve /
in-process pairs/s ratio, and what each kind of bad request got back while the load ran (over
the passage limit -> 413, no token -> 401, malformed JSON -> 422); then checks the server still
answers. The load is bounded: every client stops after its share of requests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SCIFACT = REPO.parent / "shared" / "data" / "scifact"
TOKEN = "bench-token"


def minilm_cross_encoder(out: Path) -> Path:
    """A sequence-classification model (1 label) on the embedded MiniLM encoder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from actors.models import embedded_embedder_dir

    src = embedded_embedder_dir()
    model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=1)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def load_requests(n: int, k: int, chars: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    if (SCIFACT / "corpus.jsonl").exists():
        with open(SCIFACT / "corpus.jsonl") as f:
            docs = [json.loads(next(f))["text"][:chars] for _ in range(400)]
        with open(SCIFACT / "queries_train.jsonl") as f:
            queries = [json.loads(next(f))["text"] for _ in range(200)]
    else:
        docs = [f"Passage {i} about topic {i % 7}: " + "some words about it. " * (chars // 22) for i in range(400)]
        queries = [f"what is topic {i}" for i in range(200)]
    return [(rng.choice(queries), rng.sample(docs, k)) for _ in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--passages", type=int, default=4, help="passages per request")
    ap.add_argument("--chars", type=int, default=300, help="characters per passage")
    ap.add_argument("--model", default=None, help="teacher model dir or 'embedded' (default: MiniLM cross-encoder)")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--num-cpus", type=float, default=1.0, help="CPUs (torch threads) per model copy")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    a = ap.parse_args()

    import requests
    from ray import serve

    from actors.teacher import Teacher, TeacherConfig, start_teacher
    from cluster.runtime import connect

    tmp = Path(tempfile.mkdtemp(prefix="bench_teacher_load_"))
    model = a.model or str(minilm_cross_encoder(tmp / "minilm-ce"))
    reqs = load_requests(a.requests, a.passages, a.chars)
    pairs = [(q, p) for q, ps in reqs for p in ps]
    cfg = TeacherConfig(model=model, max_batch_size=a.max_batch_size, num_cpus=a.num_cpus, port=free_port(),
                        token=TOKEN, max_passages=16, max_passage_chars=max(2000, a.chars),
                        max_ongoing_requests=max(64, a.clients * 2))
    print(f"teacher {'MiniLM cross-encoder (random head)' if a.model is None else model}: {a.requests} requests "
          f"x {a.passages} passages ({len(pairs)} pairs, <= {a.chars} chars) from {a.clients} clients; "
          f"max_batch_size {a.max_batch_size}, {a.num_cpus:g} CPU per model, {os.cpu_count()} cores", flush=True)

    # in-process: the same pairs, batched as Serve would batch them
    teacher = Teacher(cfg)
    teacher.score_batch(pairs[:8])
    t0 = time.perf_counter()
    ref = teacher.score_batch(pairs)
    inproc = time.perf_counter() - t0
    del teacher

    connect(num_cpus=max(4, int(a.num_cpus) + 2))
    t0 = time.perf_counter()
    start_teacher(cfg)
    url = f"http://127.0.0.1:{cfg.port}"
    startup = time.perf_counter() - t0
    auth = {"Authorization": f"Bearer {TOKEN}"}
    requests.post(f"{url}/score", json={"query": reqs[0][0], "passages": reqs[0][1]}, headers=auth, timeout=120)

    local = threading.local()

    def session() -> requests.Session:
        if not hasattr(local, "s"):
            local.s = requests.Session()
        return local.s

    latencies: list[float] = []
    statuses: Counter = Counter()
    scores: dict[int, list[float]] = {}

    def call(i: int) -> None:
        q, ps = reqs[i]
        t = time.perf_counter()
        try:
            r = session().post(f"{url}/score", json={"query": q, "passages": ps}, headers=auth, timeout=600)
            statuses[r.status_code] += 1
            if r.status_code == 200:
                scores[i] = r.json()["scores"]
        except requests.RequestException as e:
            statuses[type(e).__name__] += 1
        latencies.append(time.perf_counter() - t)

    bad_results: dict[str, list[int]] = {"over_limit": [], "no_token": [], "malformed_json": []}
    stop = threading.Event()

    def bad_requests() -> None:  # a bounded trickle of bad requests while the load runs
        s = requests.Session()
        while not stop.is_set() and len(bad_results["over_limit"]) < 20:
            bad_results["over_limit"].append(s.post(f"{url}/score", json={"query": "q", "passages": ["p"] * 17},
                                                    headers=auth, timeout=120).status_code)
            bad_results["no_token"].append(s.post(f"{url}/score", json={"query": "q", "passages": ["p"]},
                                                  timeout=120).status_code)
            bad_results["malformed_json"].append(s.post(f"{url}/score", data=b'{"query": "q", "passages": [',
                                                        headers={**auth, "Content-Type": "application/json"},
                                                        timeout=120).status_code)
            time.sleep(0.2)

    side = threading.Thread(target=bad_requests)
    side.start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.clients) as pool:
        list(pool.map(call, range(len(reqs))))
    wall = time.perf_counter() - t0
    stop.set()
    side.join()
    after = requests.post(f"{url}/score", json={"query": reqs[0][0], "passages": reqs[0][1]}, headers=auth,
                          timeout=120).status_code
    health = requests.get(f"{url}/health", timeout=30).json()
    serve.shutdown()

    drift = max((abs(x - y) for i, ss in scores.items() for x, y in zip(ss, ref[i * a.passages:])), default=0.0)
    served_pairs = sum(len(s) for s in scores.values())
    fig = {
        "requests": len(reqs), "clients": a.clients, "pairs": len(pairs), "wall_s": round(wall, 2),
        "startup_s": round(startup, 2), "requests_per_s": round(len(reqs) / wall, 2),
        "pairs_per_s_serve": round(served_pairs / wall, 2), "pairs_per_s_in_process": round(len(pairs) / inproc, 2),
        "latency_s": {"p50": round(statistics.median(latencies), 3), "p90": round(percentile(latencies, 90), 3),
                      "p99": round(percentile(latencies, 99), 3), "max": round(max(latencies), 3)},
        "statuses": {str(k): v for k, v in statuses.items()},
        "errors": sum(v for k, v in statuses.items() if k != 200),
        "bad_requests": {k: dict(Counter(v)) for k, v in bad_results.items()},
        "served_after_load": after, "max_score_drift": drift,
        "serve_batches": {"pairs": health["pairs_scored"], "model_calls": health["batches"]},
    }
    fig["serve_over_in_process"] = round(fig["pairs_per_s_serve"] / fig["pairs_per_s_in_process"], 3)
    print(f"\n| path | pairs/s | requests/s | p50 s | p99 s | errors |\n|---|---|---|---|---|---|")
    print(f"| in-process, batched | {fig['pairs_per_s_in_process']} | | | | |")
    print(f"| Serve HTTP, {a.clients} clients | {fig['pairs_per_s_serve']} | {fig['requests_per_s']} | "
          f"{fig['latency_s']['p50']} | {fig['latency_s']['p99']} | {fig['errors']} |")
    print(f"\nServe / in-process: {fig['serve_over_in_process']}; statuses {fig['statuses']}; bad requests during "
          f"the load: {fig['bad_requests']}; after the load: {after}; max |Serve - in-process| {drift:.1e}; "
          f"{health['pairs_scored']} pairs in {health['batches']} model calls; Serve start {startup:.1f} s")
    if a.out:
        a.out.write_text(json.dumps(fig, indent=2))


if __name__ == "__main__":
    main()
