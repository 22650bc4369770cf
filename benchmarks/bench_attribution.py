"""SCARLet's utility attribution on CPU: the bare engine next to our actor and our Ray stage,
on the same prompts, in one run.

    .venv/bin/python benchmarks/bench_attribution.py [--n 3] [--masks 64] [--data hotpotqa.jsonl]

The input: the first ``--n`` HotpotQA distractor-setting questions, each with its ten paragraphs
(cut to 120 words, the pipeline's rule) and its gold answer; ``--masks`` keep-masks per question
(p = 0.5, seeded), one prompt per mask (``prompts/scarlet/answer.yaml``), the answer scored token
by token under teacher forcing.

- ``bare engine``: ``TransformersEngine.score_tokens`` on all of a question's prompts in one
  call, in this process (nothing else: no rendering of rows, no parsing, no Ray).
- ``actor``: :class:`~actors.llm.LLMActor` on the Arrow batch of a question's mask rows, as a
  Ray worker calls it (prompt rendering, the scoring reply, cost columns), in this process.
- ``stage``: ``llm_map`` over every mask row on the local Ray (an actor pool of one, batch =
  one question's masks), as ``synthrag run scarlet`` runs its ``scarlet_attribution`` stage;
  includes the actor's start.

Ratio = bare seconds / ours (≥ 0.9 means ours costs at most ~10% over the bare engine).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hotpotqa" / "dev_distractor_sample_a300.jsonl"


def mask_rows(questions, masks_n: int):
    from pipelines.scarlet import render_context
    from pipelines.scarlet.attribution import (
        passage_budget,
        sample_masks,
        truncate_words,
    )

    rows = []
    for qi, q in enumerate(questions):
        budget = passage_budget(len(q["passages"]), len(q["question"].split()), len(q["answer"].split()), 1536, 120)
        ps = [truncate_words(p, budget)[0] for p in q["passages"]]
        for m, mask in enumerate(sample_masks(len(ps), masks_n, 0.5, seed=qi)):
            rows.append({"attr_key": f"{qi}|{m}", "example_id": str(qi), "input": q["question"], "answer": q["answer"],
                         "task_instruction": "Answer the question based on the given passages.",
                         "passages": render_context([{"text": p} for p, k in zip(ps, mask) if k])})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--masks", type=int, default=64)
    ap.add_argument("--skip-stage", action="store_true")
    a = ap.parse_args()

    import pyarrow as pa

    import prompts
    from actors.llm import LLMActor, LLMConfig, make_engine
    from pipelines.scarlet.gti import read_questions

    questions = read_questions(a.data, a.n)
    rows = mask_rows(questions, a.masks)
    by_q = [rows[i:i + a.masks] for i in range(0, len(rows), a.masks)]
    llm = LLMConfig(batch_size=a.masks, max_retries=0)
    prompt = prompts.load("scarlet/answer")
    results = {}

    eng = make_engine(llm)
    msgs = [[prompt.messages(r) for r in group] for group in by_q]
    conts = [[prompt.render_continuations(r) for r in group] for group in by_q]
    eng.score_tokens(msgs[0][:2], conts[0][:2])  # warm-up
    t0, tokens = time.perf_counter(), 0
    for m, c in zip(msgs, conts):
        eng.score_tokens(m, c)
        tokens += sum(u.prompt for u in eng.last_usage)
    results["bare engine"] = time.perf_counter() - t0
    del eng

    actor = LLMActor(llm.model_dump(), "scarlet/answer", "bench")
    actor(pa.Table.from_pylist(by_q[0][:2]))  # warm-up
    t0 = time.perf_counter()
    for group in by_q:
        out = actor(pa.Table.from_pylist(group))
        assert out.column("reject_reason").null_count == len(group), out.column("reject_detail").to_pylist()[:2]
    results["actor"] = time.perf_counter() - t0
    del actor

    if not a.skip_stage:
        import ray

        from actors.llm import llm_map
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ds = ray.data.from_items(rows)
        t0 = time.perf_counter()
        got = llm_map(ds, llm=llm, prompt="scarlet/answer", stage="bench", rows=len(rows)).take_all()
        results["stage"] = time.perf_counter() - t0
        assert len(got) == len(rows) and all(r["reject_reason"] is None for r in got)
        ray.shutdown()

    bare = results["bare engine"]
    print(f"{len(questions)} questions x {a.masks} masks x 10 passages = {len(rows)} forward passes, "
          f"{tokens} prompt tokens")
    print("| path | seconds | examples/s | forward passes/s | ratio (bare / this) |\n|---|---|---|---|---|")
    for name, secs in results.items():
        print(f"| {name} | {secs:.1f} | {len(questions) / secs:.3f} | {len(rows) / secs:.1f} | {bare / secs:.2f} |")
    print(json.dumps({k: round(v, 2) for k, v in results.items()}))


if __name__ == "__main__":
    main()
