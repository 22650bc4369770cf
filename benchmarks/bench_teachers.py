"""Which teacher agrees best with human relevance judgements? Rerank the retriever's top-k.

    .venv/bin/python benchmarks/bench_teachers.py --workdir W [--queries 40] [--depth 20]
        [--judges query-likelihood yes-no]

SciFact dev split (the 10% of judged train queries of bench_effectiveness.py, over the full
corpus): the embedded retriever (all-MiniLM-L6-v2) retrieves the top ``--depth`` documents of
the first ``--queries`` dev queries; each teacher scores every (query, document) pair and the
list is reordered by its scores. Printed per teacher: NDCG@10 and MRR@10 of the reordered lists
against the qrels (the retriever's own order is the first row: a teacher that cannot beat it
teaches the student nothing), the share of queries whose judged document it ranks first, and
pairs/s. Documents longer than the teacher's ``max_passage_chars`` (4,000) are cut to it.

The teachers are the ones synthrag ships with the embedded model: the LLM yes/no relevance
judge (``judge: yes-no``) and LLM query likelihood (``judge: query-likelihood``, UPR). A
cross-encoder directory runs with ``--cross-encoder DIR``; none ships inside a PyPI package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scifact", type=Path, default=REPO.parent / "shared" / "data" / "scifact")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--judges", nargs="+", default=["query-likelihood", "yes-no"])
    ap.add_argument("--cross-encoder", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("SYNTHRAG_PROGRESS", "0")

    from bench_effectiveness import scifact_split

    from actors.teacher import Teacher, TeacherConfig
    from pipelines.eval.retrieval import evaluate, retrieve
    from pipelines.exports.beir import passage_text, write_beir

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-teachers-"))
    work.mkdir(parents=True, exist_ok=True)
    qrels, queries, dev, _, corpus = scifact_split(args.scifact)
    dev = dev[:args.queries]
    judged = {q: qrels[q] for q in dev}
    cached = work / f"ranking-{len(dev)}-{args.depth}.json"
    if cached.exists():
        ranking = json.loads(cached.read_text())
    else:
        beir = write_beir(work / "dev", corpus.values(), {q: queries[q] for q in dev}, judged, split="dev")
        ranking = retrieve(beir, {q: queries[q] for q in dev}, k=args.depth)
        cached.write_text(json.dumps(ranking))
    print(f"{len(dev)} SciFact dev queries, top {args.depth} of {len(corpus)} documents by the "
          f"embedded retriever", flush=True)

    def row(name: str, scored: dict, seconds: float | None) -> dict:
        m = evaluate(None, judged, scored, metrics=("ndcg@10", "mrr@10"))
        first = sum(1 for q, hits in scored.items()
                    if hits and judged[q].get(max(hits, key=hits.get), 0) > 0) / len(scored)
        pairs = sum(len(h) for h in scored.values())
        return {"teacher": name, "ndcg@10": m["ndcg@10"], "mrr@10": m["mrr@10"], "first": first,
                "pairs/s": pairs / seconds if seconds else None, "seconds": seconds}

    rows = [row("retriever order (no teacher)", ranking, None)]
    teachers = [(f"LLM judge: {j}", TeacherConfig(judge=j, num_cpus=os.cpu_count() or 1)) for j in args.judges]
    if args.cross_encoder:
        teachers.append((f"cross-encoder {args.cross_encoder.name}",
                         TeacherConfig(model=str(args.cross_encoder), num_cpus=os.cpu_count() or 1)))
    for name, cfg in teachers:
        f = work / f"scores-{name.replace(' ', '_').replace(':', '')}-{len(dev)}-{args.depth}.json"
        if f.exists():
            saved = json.loads(f.read_text())
            rows.append(row(name, saved["scored"], saved["seconds"]))
            continue
        teacher = Teacher(cfg)
        t0 = time.perf_counter()
        scored = {}
        for i, q in enumerate(dev):
            docs = list(ranking[q])
            texts = [passage_text(corpus[d]["title"], corpus[d]["text"])[:cfg.max_passage_chars] for d in docs]
            scores = teacher.score(queries[q], texts)
            scored[q] = dict(zip(docs, map(float, scores)))
            if (i + 1) % 10 == 0:
                print(f"{name}: {i + 1}/{len(dev)} queries ({time.perf_counter() - t0:.0f}s)", flush=True)
        seconds = time.perf_counter() - t0
        f.write_text(json.dumps({"scored": scored, "seconds": seconds}))
        rows.append(row(name, scored, seconds))
        del teacher

    print(f"\n| teacher | NDCG@10 | MRR@10 | judged doc ranked first | pairs/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        rate = f"{r['pairs/s']:.2f}" if r["pairs/s"] else ""
        print(f"| {r['teacher']} | {r['ndcg@10']:.4f} | {r['mrr@10']:.4f} | {r['first']:.0%} | {rate} |")


if __name__ == "__main__":
    main()
