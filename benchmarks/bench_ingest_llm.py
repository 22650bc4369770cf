"""Ingest throughput (chunks/s) and the LLM stage's tokens/s next to the bare engine's.

    .venv/bin/python benchmarks/bench_ingest_llm.py [--corpus FILE_OR_DIR] [--docs 1000] [--rows 16]

The LLM comparison runs the same prompts (RAGSynth clue extraction over the first ``--rows``
chunks) twice: once straight through the engine in this process, once through ``llm_map`` (a Ray
Data actor pool with parsing and validation, no retries). Generated tokens are counted with the
model's tokenizer in both cases. The ratio shows what the Ray/actor layer costs or gains.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("SYNTHRAG_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact" / "corpus.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--docs", type=int, default=1000, help="first N records of a jsonl corpus")
    ap.add_argument("--rows", type=int, default=16, help="chunks sent to the LLM")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--splitter", default="model", choices=["model", "regex"])
    args = ap.parse_args()

    import ray
    from transformers import AutoTokenizer

    import prompts
    from actors.llm import LLMConfig, TransformersEngine, llm_map
    from actors.models import embedded_llm_dir
    from cluster.runtime import connect
    from pipelines.core.run import Run
    from pipelines.ragsynth.singlehop import clue_inputs
    from pipelines.stages.ingest import IngestConfig, ingest

    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    corpus = args.corpus
    if corpus.suffix == ".jsonl" and args.docs:
        corpus = tmp / "corpus.jsonl"
        with open(args.corpus) as src, open(corpus, "w") as dst:
            for i, line in enumerate(src):
                if i >= args.docs:
                    break
                dst.write(line)
    connect(num_cpus=os.cpu_count())
    run = Run.open(tmp / "run", command="bench", config={})
    t0 = time.perf_counter()
    ingest(run, corpus, IngestConfig(splitter=args.splitter))
    wall = time.perf_counter() - t0
    stages = {s["name"]: s for s in run.manifest["stages"]}
    chunks = stages["chunk"]["out"]
    print(json.dumps({"ingest": {
        "documents": stages["read"]["out"], "chunks": chunks, "kept_after_dedupe": stages["dedupe"]["out"],
        "seconds": round(wall, 1), "chunks_per_s": round(chunks / wall, 1),
        "stage_seconds": {k: v["seconds"] for k, v in stages.items()}}}, indent=1))

    # ---- LLM: bare engine vs the Ray Data stage, same prompts
    rows = clue_inputs(run.read_arrow("chunks").slice(0, args.rows), 12, 4, 0.5)
    tok = AutoTokenizer.from_pretrained(embedded_llm_dir())
    ntok = lambda texts: sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)  # noqa: E731
    cfg = LLMConfig(batch_size=args.batch_size, max_retries=0, num_cpus=os.cpu_count())
    prompt = prompts.load("ragsynth/clues")

    engine = TransformersEngine(cfg)
    msgs = [prompt.messages(r) for r in rows.to_pylist()]
    engine.generate(msgs[:1], prompt.sampling, [0], prompt.schema, prompt.response_prefix)  # warm-up
    t0 = time.perf_counter()
    raws = []
    for i in range(0, len(msgs), args.batch_size):
        b = msgs[i:i + args.batch_size]
        raws += engine.generate(b, prompt.sampling, [0] * len(b), prompt.schema, prompt.response_prefix)
    bare_s = time.perf_counter() - t0
    bare_tokens = ntok(raws)
    del engine

    ds = llm_map(ray.data.from_arrow(rows), llm=cfg, prompt="ragsynth/clues", stage="bench")
    t0 = time.perf_counter()
    out = ds.take_all()
    stage_s = time.perf_counter() - t0
    stage_tokens = ntok([r["llm_raw"] for r in out])
    valid = sum(r["reject_reason"] is None for r in out)
    bare_tps, stage_tps = bare_tokens / bare_s, stage_tokens / stage_s
    print(json.dumps({"llm": {
        "rows": len(msgs), "batch_size": args.batch_size, "guided": cfg.guided,
        "bare_engine": {"tokens": bare_tokens, "seconds": round(bare_s, 1), "tokens_per_s": round(bare_tps, 1)},
        "ray_stage": {"tokens": stage_tokens, "seconds": round(stage_s, 1), "tokens_per_s": round(stage_tps, 1),
                      "valid_rows": valid, "note": "includes actor start-up and model load"},
        "stage_over_bare": round(stage_tps / bare_tps, 3)}}, indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main()
