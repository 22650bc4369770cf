"""MiniLM on SciFact before and after fine-tuning with each retriever loss, printed as a table.

    .venv/bin/python benchmarks/bench_scifact_finetune.py [--losses contrastive listwise combined pairwise]
        [--negatives 3] [--teacher-queries 120] [--train-queries N] [--epochs 1] [--batch-size 16]
        [--fn-scopes contrastive all]

The SciFact train queries (../shared/data/scifact) are split 90/10 by a hash of the query id.
Training lists for the 90%: the judged documents as positives and ``--negatives`` hard negatives
mined with the base model's index (ranks 3-30, positives excluded). ``listwise`` and ``combined``
also need teacher scores: the embedded teacher (LLM query-likelihood judge, ~3 pairs/s on 2 cores)
scores the lists of the first ``--teacher-queries`` train queries, min-max normalised on the
1st/99th percentiles; those losses train on that subset. Every model (the base, then one per loss)
is evaluated on the 10% with the full corpus: NDCG@10, Recall@100, MRR@10, P@3 by pytrec_eval.
``--fn-scopes`` trains the teacher losses once per false-negative scope (Tamber et al. §3.3.3:
``contrastive`` leaves candidates above 0.6 × the positive's teacher score out of the contrastive
negatives only, ``all`` out of the listwise target too). A rerun on the same ``--workdir`` reuses the lists, teacher scores, exported models (``model-<loss>``
with its metrics.json) and their dev metrics (``metrics/``); delete one to recompute it.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scifact", type=Path, default=REPO.parent / "shared" / "data" / "scifact")
    ap.add_argument("--losses", nargs="+", default=["contrastive", "listwise", "combined", "pairwise"])
    ap.add_argument("--negatives", type=int, default=3)
    ap.add_argument("--teacher-queries", type=int, default=120)
    ap.add_argument("--train-queries", type=int, default=None,
                    help="train contrastive/pairwise on the lists of the first N train queries (all by default)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--fn-scopes", nargs="+", default=["contrastive"], choices=["contrastive", "all"],
                    help="false-negative scopes to train listwise/combined with (one model each)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("SYNTHRAG_PROGRESS", "0")

    from actors.embedder import EmbedderSettings, encode_texts, load_model
    from actors.teacher import Teacher, TeacherConfig
    from pipelines.core.schema import stable_id
    from pipelines.eval.retrieval import evaluate_beir
    from pipelines.exports.beir import (
        iter_corpus,
        load_qrels,
        load_queries,
        passage_text,
        write_beir,
    )
    from pipelines.querygen import normalise_scores
    from pipelines.stages.index import VectorIndex, write_embeddings
    from pipelines.stages.mining import MiningConfig, mine_hard_negatives
    from training.retriever import RetrieverTrainConfig, train_retriever

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-scifact-"))
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    qrels, queries = load_qrels(args.scifact, "train"), load_queries(args.scifact, "train")
    qids = sorted((q for q in qrels if q in queries), key=lambda q: stable_id("split", q))
    n_dev = round(0.1 * len(qids))
    dev, train = qids[:n_dev], qids[n_dev:]
    corpus = {d["_id"]: d for batch in iter_corpus(args.scifact) for d in batch}
    print(f"SciFact train: {len(qids)} judged queries -> {len(train)} train / {len(dev)} dev; "
          f"{len(corpus)} documents", flush=True)

    plain, taught = work / "lists.jsonl", work / "lists_teacher.jsonl"
    if plain.exists() and taught.exists():  # a rerun on the same --workdir reuses lists and teacher scores
        subset = taught.read_text().splitlines()
        print(f"reusing {plain} and {taught} ({len(subset)} teacher-scored lists)", flush=True)
    else:
        # 1. mine hard negatives with the base model
        t0 = time.perf_counter()
        settings = EmbedderSettings()
        base = load_model("embedded")
        ids = list(corpus)

        def batches():
            for i in range(0, len(ids), 512):
                chunk = ids[i:i + 512]
                yield chunk, encode_texts([passage_text(corpus[d]["title"], corpus[d]["text"]) for d in chunk],
                                          kind="passage", settings=settings, model=base)

        index = VectorIndex.build(write_embeddings(batches(), work / "embeddings"))
        qvec = encode_texts([queries[q] for q in train], kind="query", settings=settings, model=base)
        negs, _ = mine_hard_negatives(index, qvec, [set(qrels[q]) for q in train],
                                      MiningConfig(rank_start=3, rank_end=30, num_negatives=args.negatives))
        print(f"mined {args.negatives} negatives for {len(train)} queries ({time.perf_counter() - t0:.0f}s)", flush=True)

        def text(d: str) -> str:
            return passage_text(corpus[d]["title"], corpus[d]["text"])

        lists = []
        for q, n in zip(train, negs):
            for p in sorted(d for d, r in qrels[q].items() if r > 0):
                lists.append({"query_id": f"{q}:{p}", "query": queries[q], "positive": text(p),
                              "candidates": [text(p)] + [text(d) for d in n]})
        plain.write_text("".join(json.dumps(r) + "\n" for r in lists))

        # 2. teacher scores for a subset (the embedded LLM judge is slow on 2 cores)
        t0 = time.perf_counter()
        teacher = Teacher(TeacherConfig(judge="query-likelihood", num_cpus=os.cpu_count() or 1, max_passage_chars=10**6))
        subset = [r for r in lists if r["query_id"].split(":")[0] in set(train[:args.teacher_queries])]
        raw = [teacher.score(r["query"], r["candidates"]) for r in subset]
        norm, lo, hi = normalise_scores(raw, 1, 99)
        taught.write_text("".join(json.dumps({**r, "teacher_scores": s}) + "\n" for r, s in zip(subset, norm)))
        rank1 = sum(1 for s in raw if max(range(len(s)), key=s.__getitem__) == 0) / max(1, len(raw))
        print(f"teacher scored {len(subset)} lists ({sum(map(len, raw))} pairs, {time.perf_counter() - t0:.0f}s); "
              f"positive ranked first by the teacher in {rank1:.0%}", flush=True)
        del teacher

    # 3. the 10% dev set as a BEIR folder over the full corpus
    beir = write_beir(work / "dev", corpus.values(), {q: queries[q] for q in dev}, {q: qrels[q] for q in dev},
                      split="dev")

    if args.train_queries is not None:  # a shorter run: contrastive/pairwise on a prefix of the train queries
        keep = set(train[:args.train_queries])
        rows = [r for r in plain.read_text().splitlines() if json.loads(r)["query_id"].split(":")[0] in keep]
        plain = work / f"lists_{args.train_queries}.jsonl"
        plain.write_text("".join(r + "\n" for r in rows))
    n_plain = len(plain.read_text().splitlines())

    results = {}

    cached = work / "metrics"  # one file per evaluated model, reused by a rerun on the same --workdir
    cached.mkdir(exist_ok=True)

    def evaluate(name: str, model_dir: str) -> None:
        f = cached / (name.strip("+ ").split(" ")[0] + ".json")
        weights = Path(model_dir) / "model.safetensors"
        if f.exists() and (not weights.exists() or f.stat().st_mtime > weights.stat().st_mtime):
            results[name] = json.loads(f.read_text())
            print(f"{name}: {json.dumps(results[name])} (reused {f})", flush=True)
            return
        t = time.perf_counter()
        metrics, _ = evaluate_beir(beir, split="dev", settings=EmbedderSettings(model=model_dir))
        results[name] = {k: round(v, 4) for k, v in metrics.items() if k != "num_queries"}
        f.write_text(json.dumps(results[name]))
        print(f"{name}: {json.dumps(results[name])} ({time.perf_counter() - t:.0f}s)", flush=True)

    evaluate("MiniLM (base)", "embedded")
    flagged = sum(int(v > 0.6 * r["teacher_scores"][0]) for r in map(json.loads, taught.read_text().splitlines())
                  for v in r["teacher_scores"][1:])
    runs = [(loss, scope) for loss in args.losses
            for scope in (args.fn_scopes if loss in ("listwise", "combined") else ["contrastive"])]
    for loss, scope in runs:
        data = taught if loss in ("listwise", "combined") else plain
        tag = loss if scope == "contrastive" else f"{loss}-fn_all"
        out = work / f"model-{tag}"
        if (out / "metrics.json").exists():  # exported by an earlier invocation: delete it to retrain
            done = json.loads((out / "metrics.json").read_text())
            print(f"reusing {out}: {done.get('steps')} steps, best dev loss {done.get('best_dev_loss')}", flush=True)
        else:
            t = time.perf_counter()
            cfg = RetrieverTrainConfig(data=data, base="embedded", out=out, loss=loss, fn_scope=scope,
                                       epochs=args.epochs, batch_size=args.batch_size, chunk_size=32,
                                       negatives=args.negatives, cpus_per_worker=os.cpu_count() or 1)
            summary = train_retriever(cfg)
            print(f"trained {tag} on {data.name}: {summary.get('steps')} steps, best dev loss "
                  f"{summary.get('best_dev_loss')} ({time.perf_counter() - t:.0f}s)", flush=True)
        evaluate(f"+ {tag}", str(out))

    print(f"\nSciFact train 90/10 split: {len(train)} train / {len(dev)} dev queries, full corpus "
          f"({len(corpus)} docs); {args.negatives} mined negatives; contrastive/pairwise on {n_plain} lists, "
          f"listwise/combined on {len(subset)} teacher-scored lists ({flagged} candidates above 0.6 x the positive's "
          f"teacher score)")
    print(f"{'model':<24} {'ndcg@10':>8} {'recall@100':>10} {'mrr@10':>8} {'p@3':>8}")
    for name, m in results.items():
        print(f"{name:<24} {m['ndcg@10']:>8.4f} {m['recall@100']:>10.4f} {m['mrr@10']:>8.4f} {m['p@3']:>8.4f}")
    print(f"({time.perf_counter() - t_all:.0f}s in all; outputs in {work})")


if __name__ == "__main__":
    main()
