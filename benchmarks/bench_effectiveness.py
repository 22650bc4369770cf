"""Does synthrag's own data make a retriever better than the user's human queries do? One table.

    .venv/bin/python benchmarks/bench_effectiveness.py --workdir W [--passages 48]
        [--human-epochs 1] [--skip-synthrag] [--skip-contrastive]

SciFact (../shared/data/scifact). The judged train queries are split 90/10 by a hash of the query
id (the split of bench_scifact_finetune.py); the 10% (81 queries) over the full corpus (5,183
documents) is the dev set every row is evaluated on (exact search, pytrec_eval). Rows:

  base             all-MiniLM-L6-v2 as shipped (the embedded retriever)
  human MNRL       the reference: the 90% train queries, one list per judged (query, document),
                   in-batch negatives only at scale 20 (sentence-transformers'
                   MultipleNegativesRankingLoss: our contrastive loss, tau 0.05, no mined
                   negatives), batch 32, lr 2e-5, ``--human-epochs``
  synthrag ...     ``synthrag run querygen --config configs/querygen.yaml --limit N`` on the
                   corpus alone (no human query anywhere): generate, top-20 filter, teacher
                   filter, lists, then its default training (combined loss, 3 epochs, batch 32)
  ... contrastive  the same lists with the contrastive loss only (teacher scores unused)

"minutes" is the compute a row spent making its model: ingest, index, generation, filtering and
training for the synthrag rows, training for the human row (evaluation excluded everywhere);
"kept/min" is the synthrag rows' training lists per minute of making them (training excluded). A rerun on the same
``--workdir`` reuses what exists: the querygen run resumes stage by stage, a model with its
metrics.json is not retrained, an evaluation in ``metrics/`` is not redone (delete to redo).
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
SHARED = REPO.parent / "shared" / "data"
METRICS = ("ndcg@10", "recall@100", "mrr@10")


def scifact_split(scifact: Path) -> tuple[dict, dict, list[str], list[str], dict]:
    """(qrels, queries, dev ids, train ids, corpus by id): SciFact's judged train queries split
    90/10 by a hash of the query id, the split of bench_scifact_finetune.py."""
    from pipelines.core.schema import stable_id
    from pipelines.exports.beir import iter_corpus, load_qrels, load_queries

    qrels, queries = load_qrels(scifact, "train"), load_queries(scifact, "train")
    qids = sorted((q for q in qrels if q in queries), key=lambda q: stable_id("split", q))
    n_dev = round(0.1 * len(qids))
    corpus = {d["_id"]: d for batch in iter_corpus(scifact) for d in batch}
    return qrels, queries, qids[:n_dev], qids[n_dev:], corpus


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scifact", type=Path, default=SHARED / "scifact")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--passages", type=int, default=48, help="passages querygen generates from")
    ap.add_argument("--human-epochs", type=int, default=1)
    ap.add_argument("--skip-synthrag", action="store_true", help="only the base and human rows")
    ap.add_argument("--skip-contrastive", action="store_true",
                    help="no contrastive-only row for the synthrag lists")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="extra querygen run overrides (key=value), as `synthrag run --set`")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("SYNTHRAG_PROGRESS", "0")

    from actors.embedder import EmbedderSettings
    from cluster.runtime import connect
    from pipelines.cli.run import execute
    from pipelines.core.schema import stable_id
    from pipelines.eval.retrieval import evaluate_beir
    from pipelines.exports.beir import passage_text, write_beir
    from pipelines.registry import METHODS
    from training.retriever import RetrieverTrainConfig, train_retriever

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-effectiveness-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "metrics").mkdir(exist_ok=True)
    t_all = time.perf_counter()
    qrels, queries, dev, train, corpus = scifact_split(args.scifact)
    beir = write_beir(work / "dev", corpus.values(), {q: queries[q] for q in dev},
                      {q: qrels[q] for q in dev}, split="dev")
    print(f"SciFact: {len(train)} train / {len(dev)} dev judged queries, {len(corpus)} documents; "
          f"workdir {work}", flush=True)
    connect(None)
    rows: list[dict] = []

    def evaluate(name: str, model: str) -> dict:
        f = work / "metrics" / f"{stable_id('eval', name, model)}.json"
        weights = Path(model) / "model.safetensors"
        if f.exists() and (not weights.exists() or f.stat().st_mtime > weights.stat().st_mtime):
            return json.loads(f.read_text())
        t = time.perf_counter()
        metrics, _ = evaluate_beir(beir, split="dev", settings=EmbedderSettings(model=model))
        m = {k: round(v, 4) for k, v in metrics.items() if k in METRICS}
        f.write_text(json.dumps(m))
        print(f"evaluated {name}: {json.dumps(m)} ({time.perf_counter() - t:.0f}s)", flush=True)
        return m

    def fit(out: Path, data: Path, **settings) -> tuple[dict, float]:
        if (out / "metrics.json").exists():
            done = json.loads((out / "metrics.json").read_text())
            return done, done.get("bench_seconds", 0.0)
        t = time.perf_counter()
        done = train_retriever(RetrieverTrainConfig(data=data, out=out, base="embedded",
                                                    cpus_per_worker=os.cpu_count() or 1, **settings))
        seconds = time.perf_counter() - t
        done["bench_seconds"] = seconds
        (out / "metrics.json").write_text(json.dumps(done, indent=2))
        return done, seconds

    rows.append({"row": "MiniLM (base)", "source": "", "passages": "", "queries": "", "loss": "",
                 "minutes": 0.0, **evaluate("base", "embedded")})

    # the reference: MNRL on the human train queries
    human = work / "human_lists.jsonl"
    if not human.exists():
        def text(d: str) -> str:
            return passage_text(corpus[d]["title"], corpus[d]["text"])
        lists = [{"query_id": f"{q}:{d}", "query": queries[q], "positive": text(d), "candidates": [text(d)]}
                 for q in train for d in sorted(qrels[q]) if qrels[q][d] > 0 and d in corpus]
        human.write_text("".join(json.dumps(r) + "\n" for r in lists))
    n_human = len(human.read_text().splitlines())
    done, seconds = fit(work / "model-human-mnrl", human, loss="contrastive", negatives=0, tau=0.05,
                          epochs=args.human_epochs, batch_size=32, lr=2e-5)
    rows.append({"row": "+ human queries, MNRL", "source": "SciFact train queries (human)",
                 "passages": "", "queries": f"{len(train)} ({done.get('n_train', n_human)} lists train)",
                 "loss": "contrastive (in-batch, scale 20)", "minutes": seconds / 60,
                 **evaluate("human-mnrl", str(work / "model-human-mnrl"))})

    if not args.skip_synthrag:
        run = work / f"querygen-{args.passages}"
        t = time.perf_counter()
        execute("run querygen", args.scifact / "corpus.jsonl", run, REPO / "configs" / "querygen.yaml",
                ["querygen.train.enabled=true", "querygen.evaluate.beir=null", *args.sets], None,
                method=METHODS["querygen"].run, limit=args.passages)
        print(f"querygen run: {time.perf_counter() - t:.0f}s this invocation", flush=True)
        manifest = json.loads((run / "manifest.json").read_text())
        secs = {s["name"]: s["seconds"] for s in manifest["stages"]}
        stages = {s["name"]: s for s in manifest["stages"]}
        made = sum(v for k, v in secs.items() if k != "querygen_train")
        n_lists = stages["querygen_lists"]["out"]
        sent = stages["querygen_generate"]["in"]
        by_type = stages["querygen_filter"].get("by_type", {})
        print("querygen funnel: " + json.dumps({"sent": sent, "parsed": stages["querygen_generate"]["out"],
                                                 "rejected_generate": stages["querygen_generate"]["rejected"],
                                                 "rejected_filter": stages["querygen_filter"]["rejected"],
                                                 "kept": n_lists, "by_type": by_type}), flush=True)
        print("stage seconds: " + json.dumps({k: round(v) for k, v in secs.items()}), flush=True)
        rows.append({"row": f"+ synthrag querygen, {args.passages} passages", "source": "synthrag (corpus only)",
                     "passages": args.passages, "queries": f"{n_lists} kept of {sent}",
                     "loss": "combined (listwise KL + 0.1 InfoNCE)",
                     "minutes": (made + secs.get("querygen_train", 0.0)) / 60, "per_min": n_lists / (made / 60),
                     **evaluate(f"querygen-{args.passages}", str(run / "retriever"))})
    if not args.skip_synthrag and not args.skip_contrastive:
        done, seconds = fit(work / f"model-querygen-{args.passages}-contrastive", run, loss="contrastive")
        rows.append({"row": "  same lists, contrastive", "source": "synthrag (corpus only)",
                     "passages": args.passages, "queries": f"{n_lists} kept of {sent}",
                     "loss": "contrastive (InfoNCE, mined)", "minutes": (made + seconds) / 60,
                     "per_min": n_lists / (made / 60),
                     **evaluate(f"querygen-{args.passages}-contrastive",
                                str(work / f"model-querygen-{args.passages}-contrastive"))})

    print(f"\nSciFact dev: {len(dev)} held-out train queries over {len(corpus)} documents "
          f"({time.perf_counter() - t_all:.0f}s this invocation)")
    print("| model | data source | passages | queries | loss | minutes | kept/min | NDCG@10 | Recall@100 | MRR@10 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        per_min = f"{r['per_min']:.2f}" if r.get("per_min") else ""
        print(f"| {r['row']} | {r['source']} | {r['passages']} | {r['queries']} | {r['loss']} | "
              f"{r['minutes']:.1f} | {per_min} | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} | {r['mrr@10']:.4f} |")


if __name__ == "__main__":
    main()
