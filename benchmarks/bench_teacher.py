"""Teacher throughput: (query, passage) pairs/s in-process vs through Ray Serve (handle, HTTP).

    .venv/bin/python benchmarks/bench_teacher.py [--model embedded] [--requests 64]
        [--passages-per-request 4] [--chars 400] [--concurrency 16] [--max-batch-size 16]

Passages are SciFact abstracts cut to ``--chars`` characters (or built-in sentences when the
shared data is absent); queries are SciFact claims. Every path scores the same pairs with the
same CPUs per model (``--num-cpus`` torch threads) after a warm-up; the ratio column is
pairs/s divided by the batched in-process figure. The in-process model is loaded in this
process; the Serve replica loads its own copy.
"""

import argparse
import json
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"


def load_requests(n: int, k: int, chars: int) -> list[tuple[str, list[str]]]:
    if (SCIFACT / "corpus.jsonl").exists():
        with open(SCIFACT / "corpus.jsonl") as f:
            docs = [json.loads(next(f))["text"][:chars] for _ in range(max(k * 4, 32))]
        with open(SCIFACT / "queries_train.jsonl") as f:
            queries = [json.loads(next(f))["text"] for _ in range(32)]
    else:
        docs = [f"Passage {i} about topic {i % 7}: " + "some words about it. " * (chars // 22) for i in range(32)]
        queries = [f"what is topic {i}" for i in range(32)]
    return [(queries[i % len(queries)], [docs[(i * k + j) % len(docs)] for j in range(k)]) for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--passages-per-request", type=int, default=4)
    ap.add_argument("--chars", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=16, help="HTTP client threads")
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--num-cpus", type=float, default=1.0)
    args = ap.parse_args()

    import requests
    from ray import serve

    from actors.teacher import Teacher, TeacherConfig, score_many, start_teacher
    from cluster.runtime import connect

    reqs = load_requests(args.requests, args.passages_per_request, args.chars)
    pairs = [(q, p) for q, ps in reqs for p in ps]
    n = len(pairs)
    cfg = TeacherConfig(model=args.model, max_batch_size=args.max_batch_size, num_cpus=args.num_cpus,
                        max_passage_chars=max(args.chars, 4000), port=free_port())
    print(f"teacher {args.model}: {args.requests} requests x {args.passages_per_request} passages "
          f"= {n} pairs, passages <= {args.chars} chars, max_batch_size {args.max_batch_size}, "
          f"{args.num_cpus:g} CPU per model, {os.cpu_count()} cores", flush=True)

    rows = []
    load0 = os.getloadavg()[0]
    teacher = Teacher(cfg)
    teacher.score_batch(pairs[:4])  # warm-up
    ref = []
    rows.append(("in-process, batched", timed(lambda: ref.extend(teacher.score_batch(pairs)))))
    single = pairs[: max(8, n // 4)]
    t = timed(lambda: [teacher.score_batch([p]) for p in single])
    rows.append(("in-process, one pair per call", t * n / len(single)))  # extrapolated to n

    connect(num_cpus=max(4, int(args.num_cpus) + 2))
    handle = start_teacher(cfg)
    url = f"http://127.0.0.1:{cfg.port}"
    score_many(handle, [q for q, _ in reqs[:4]], [ps for _, ps in reqs[:4]])  # warm-up
    got = []
    rows.append(("Serve handle (all requests in flight)",
                 timed(lambda: got.extend(score_many(handle, [q for q, _ in reqs], [ps for _, ps in reqs])))))

    session = requests.Session()

    def post(r):
        resp = session.post(f"{url}/score", json={"query": r[0], "passages": r[1]}, timeout=600)
        resp.raise_for_status()
        return resp.json()["scores"]

    post(reqs[0])
    http = []
    with ThreadPoolExecutor(args.concurrency) as pool:
        rows.append((f"Serve HTTP ({args.concurrency} client threads)",
                     timed(lambda: http.extend(pool.map(post, reqs)))))
    health = session.get(f"{url}/health", timeout=30).json()
    serve.shutdown()
    # The machine may be shared: measure in-process again to see how much the load moved.
    rows.append(("in-process, batched (again, after Serve)", timed(lambda: teacher.score_batch(pairs))))

    flat = [s for ss in got for s in ss]
    drift = max(abs(a - b) for a, b in zip(ref, flat))
    base = n / rows[0][1]
    print(f"{'path':42s} {'seconds':>8s} {'pairs/s':>8s} {'ratio':>6s}")
    for name, secs in rows:
        print(f"{name:42s} {secs:8.2f} {n / secs:8.2f} {n / secs / base:6.2f}")
    print(f"max |score(Serve) - score(in-process)| = {drift:.2e}; Serve batches: "
          f"{health['pairs_scored']} pairs in {health['batches']} model calls "
          f"(mean {health['pairs_scored'] / max(1, health['batches']):.1f} pairs); "
          f"load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
