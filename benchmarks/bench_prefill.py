"""Where LLM time goes on CPU: bare ``generate`` next to the engine (with and without shared-prefix
reuse) and the query-distillation generate stage, on the same prompts, in one run.

    .venv/bin/python benchmarks/bench_prefill.py [--corpus scifact/corpus.jsonl] [--n 24]

The prompts are the stage's own: ``querygen/question`` (instructions + the packaged few-shot
examples + one passage) over the first ``--n`` SciFact abstracts, the prompt's sampling
(temperature 0.7, 48 new tokens at most), batches of ``llm.batch_size`` (8).

- ``bare generate``: transformers ``model.generate`` on the left-padded batch, nothing reused;
  once free, once with the xgrammar JSON-schema processor the engine uses.
- ``engine, reuse off``: ``TransformersEngine`` with ``llm.prefix_cache: 0`` (the plain path).
- ``engine, reuse on``: the default: the batch's shared prefix prefilled once and kept, each row's
  own tokens prefilled unpadded, the rows decoded as one batch.
- ``stage``: ``llm_stage`` (Ray actor pool, retries, checks, the run directory) over the same
  rows, as ``synthrag run querygen`` runs it; its seconds include the actor's start and every
  retry, its manifest entry the engine's token counts.

Seconds per prompt = wall seconds / prompts; tokens/s = generated tokens / wall seconds.
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
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact" / "corpus.jsonl"


def bare_generate(eng, batches, sampling, schema):
    """transformers ``generate`` as a user would call it: left padding, no cache."""
    torch = eng.torch
    pad, tokens = eng.tok.pad_token_id, 0
    for batch in batches:
        ids = [eng._prompt_ids(m, "") for m in batch]
        width = max(len(i) for i in ids)
        x = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
        proc = eng._logits_processor(schema)
        torch.manual_seed(0)
        with torch.inference_mode():
            out = eng.model.generate(input_ids=x, attention_mask=mask, max_new_tokens=sampling.max_tokens,
                                     do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                                     top_k=None, logits_processor=[proc] if proc else None,
                                     pad_token_id=pad, eos_token_id=eng.tok.eos_token_id)
        for row in out[:, width:].tolist():
            tokens += next((i + 1 for i, t in enumerate(row) if t == eng.tok.eos_token_id), len(row))
    return tokens


def engine_generate(eng, batches, sampling, schema):
    tokens = 0
    for batch in batches:
        eng.generate(batch, sampling, [0] * len(batch), schema, "")
        tokens += sum(u.generated for u in eng.last_usage)
    return tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--n", type=int, default=24, help="prompts (first N abstracts)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                    help="llm.dtype for every path (auto: the checkpoint's, fp32 for the embedded model)")
    ap.add_argument("--skip-stage", action="store_true")
    ap.add_argument("--variant", default="default", choices=["default", "small"],
                    help="the prompt wording every path runs (small: the embedded model's default)")
    args = ap.parse_args()

    import prompts
    from actors.llm import TransformersEngine
    from pipelines.querygen import (
        _generation_rows,
        _parse_examples,
        _queries,
        check_query,
        load_examples,
    )
    from pipelines.querygen.config import QuerygenConfig
    from pipelines.registry import RunConfig

    docs = []
    with open(args.corpus) as f:
        for line in f:
            d = json.loads(line)
            docs.append({"chunk_id": str(d.get("_id", len(docs))), "text": d["text"]})
            if len(docs) >= args.n:
                break
    qg = QuerygenConfig(query_types=["question"])
    examples = load_examples(qg)
    variant = None if args.variant == "default" else args.variant
    prompt = prompts.load("querygen/question", variant=variant)
    msgs = [prompt.messages({"text": d["text"], "examples": examples["question"]}) for d in docs]
    cfg = RunConfig()
    cfg.llm.dtype = args.dtype
    cfg.llm.prompt_variant = args.variant  # the prompt above, on every path
    bs = cfg.llm.batch_size
    batches = [msgs[i:i + bs] for i in range(0, len(msgs), bs)]
    rows: list[tuple[str, float, int, str]] = []
    judge_rows: list[tuple[str, float, str]] = []

    def timed(name, fn):
        t0 = time.perf_counter()
        tokens = fn()
        rows.append((name, time.perf_counter() - t0, tokens, ""))
        print(f"  {name}: {rows[-1][1]:.1f} s", flush=True)

    plain = TransformersEngine(cfg.llm.model_copy(update={"prefix_cache": 0}))
    reuse = TransformersEngine(cfg.llm)
    lens = [len(plain._prompt_ids(m, "")) for m in msgs]
    print(f"{len(msgs)} prompts, {sum(lens) / len(lens):.0f} prompt tokens on average, batch {bs}, "
          f"dtype {str(plain.model.dtype).removeprefix('torch.')}, "
          f"at most {prompt.sampling.max_tokens} new tokens, temperature {prompt.sampling.temperature}", flush=True)
    timed("bare generate, free", lambda: bare_generate(plain, batches, prompt.sampling, None))
    timed("bare generate, JSON schema", lambda: bare_generate(plain, batches, prompt.sampling, prompt.schema))
    timed("engine, reuse off", lambda: engine_generate(plain, batches, prompt.sampling, prompt.schema))
    cached = []

    def with_reuse():
        n = engine_generate(reuse, batches[:1], prompt.sampling, prompt.schema)
        cached.append(sum(u.cached for u in reuse.last_usage))
        for b in batches[1:]:
            n += engine_generate(reuse, [b], prompt.sampling, prompt.schema)
            cached.append(sum(u.cached for u in reuse.last_usage))
        return n

    timed("engine, reuse on", with_reuse)
    rows[-1] = rows[-1][:3] + (f"{sum(cached)} of {sum(lens)} prompt tokens reused",)

    # the teacher's relevance judge: one query against every passage (one forward per pair)
    from actors.teacher import next_token_logprobs

    judge = prompts.load("teacher/relevance")
    pairs = [judge.messages({"query": "what do these studies find", "passage": d["text"]}) for d in docs]
    yes_no = [plain.tok(c, add_special_tokens=False)["input_ids"][0] for c in ("yes", "no")]
    scores = {}
    for name, eng in (("teacher judge, reuse off", plain), ("teacher judge, reuse on", reuse)):
        t0 = time.perf_counter()
        scores[name] = next_token_logprobs(eng, pairs, yes_no)
        secs = time.perf_counter() - t0
        reused = sum(u.cached for u in eng.last_usage)
        judge_rows.append((name, secs, f"{reused} of {sum(u.prompt for u in eng.last_usage)} prompt tokens reused"))
    drift = max(abs(a - b) for x, y in zip(*scores.values()) for a, b in zip(x, y))

    if not args.skip_stage:
        import pyarrow as pa

        from cluster.runtime import connect
        from pipelines.core.run import Run
        from pipelines.stages.stage import llm_stage, ray_from_arrow

        connect()
        run = Run.open(Path(tempfile.mkdtemp(prefix="bench-prefill-")), command="bench", config={})
        table = _generation_rows(pa.Table.from_pylist(docs), ["question"], examples)
        t0 = time.perf_counter()
        llm_stage(run, cfg, "querygen_generate", [], lambda: ray_from_arrow(table), "gen_key",
                  {"question": "querygen/question"}, "querygen_queries", prompt_key="query_type",
                  check=check_query(qg.max_query_words), prepare=_parse_examples, then=_queries)
        wall = time.perf_counter() - t0
        rec = run.stage_record("querygen_generate")
        c = rec["llm"]
        rows.append(("stage (querygen_generate)", wall, c["generated_tokens"],
                     f"{c['calls']} calls ({c['retries']} retries), {rec['out']} kept; "
                     f"{c['cached_prompt_tokens']} of {c['prompt_tokens']} prompt tokens reused; "
                     f"engine {c['seconds']:.1f} s"))

    base = rows[0][1]
    print("\n| path | s/prompt | × bare free | generated tok/s | notes |\n|---|---|---|---|---|")
    for name, secs, tokens, note in rows:
        print(f"| {name} | {secs / len(msgs):.2f} | {secs / base:.2f} | {tokens / secs:.1f} | {note} |")
    print(f"\n| scoring path ({len(pairs)} passages, 1 query) | s/pair | notes |\n|---|---|---|")
    for name, secs, note in judge_rows:
        print(f"| {name} | {secs / len(pairs):.3f} | {note} |")
    print(f"largest |log-prob| difference reuse on vs off: {drift:.2e}")


if __name__ == "__main__":
    main()
