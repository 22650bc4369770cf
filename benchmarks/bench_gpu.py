"""The GPU figures in one run (issue 19, item 6): ``benchmarks/gpu.sh`` calls this on one GPU.

    python benchmarks/bench_gpu.py --out gpu.json [--parts llm gradcache faiss]

Each part writes its figures, or why it could not run, into one JSON file; a part that fails
does not stop the others, and every part is bounded (sizes and timeouts below, ~8 min in all).

- ``llm``: a random-initialised Llama-architecture model built from a config (no download: the
  tokenizer is the packaged SmolLM2's, the weights are random, which is fine for throughput) is
  saved once; then the bare engine (``vllm.LLM.generate``, fixed 128 new tokens per prompt,
  ``ignore_eos``) at batch 1, 8 and 32, and the same prompts through our LLM stage
  (``actors.llm.llm_map``, engine ``vllm``: Ray Data + ``ray.data.llm``), tokens/s each;
  the stage's figure includes the processor's start-up, also reported alone.
- ``gradcache``: ``benchmarks/bench_gradcache.py`` at batch 64, 256, 1024 (its step time and
  peak CUDA memory for uncached vs GradCache vs sentence-transformers' cached MNRL).
- ``faiss``: 1M random 384-d vectors, flat and IVF indexes built on the GPU
  (``pipelines.stages.index.VectorIndex``), build seconds and queries/s for 10,000 queries, k=10.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("SYNTHRAG_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROMPT = "Write a detailed paragraph about pump maintenance, number {i}, for an operator's manual."


def random_llama(out: Path, layers: int, hidden: int) -> Path:
    """A Llama-architecture model with random weights and the packaged SmolLM2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from actors.models import embedded_llm_dir

    tok = AutoTokenizer.from_pretrained(embedded_llm_dir())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 64 * 64,
                      num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 256),
                      max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      torch_dtype="bfloat16")
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def part_llm(args) -> dict:
    import ray
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from actors.llm import LLMConfig, llm_map

    model = random_llama(Path(tempfile.mkdtemp(prefix="rand-llama-")), args.llm_layers, args.llm_hidden)
    tok = AutoTokenizer.from_pretrained(model)
    prompts = [PROMPT.format(i=i) for i in range(args.llm_rows)]
    t0 = time.perf_counter()
    llm = LLM(model=str(model), dtype="bfloat16", max_model_len=1024, gpu_memory_utilization=0.5, seed=0)
    out: dict = {"model": {"layers": args.llm_layers, "hidden": args.llm_hidden, "random_weights": True},
                 "bare_startup_s": round(time.perf_counter() - t0, 1), "bare": {}}
    sp = SamplingParams(max_tokens=128, ignore_eos=True, temperature=0)
    for batch in (1, 8, 32):
        t0, tokens = time.perf_counter(), 0
        for i in range(0, len(prompts), batch):
            for o in llm.generate(prompts[i:i + batch], sp, use_tqdm=False):
                tokens += len(o.outputs[0].token_ids)
        s = time.perf_counter() - t0
        out["bare"][f"batch_{batch}"] = {"tokens": tokens, "seconds": round(s, 2), "tokens_per_s": round(tokens / s, 1)}
    del llm
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()

    ray.init(ignore_reinit_error=True)
    cfg = LLMConfig(engine="vllm", model=str(model), num_gpus=1, batch_size=32, max_retries=0, guided=False,
                    max_tokens=128, max_model_len=1024, gpu_memory_utilization=0.5, dtype="bf16")
    rows = ray.data.from_items([{"row_id": str(i), "messages": [{"role": "user", "content": p}]}
                                for i, p in enumerate(prompts)])
    t0 = time.perf_counter()
    done = llm_map(rows, llm=cfg, prompt="generic/chat", stage="bench").take_all()
    s = time.perf_counter() - t0
    tokens = sum(len(tok(r["llm_raw"] or "", add_special_tokens=False)["input_ids"]) for r in done)
    out["stage"] = {"rows": len(done), "tokens": tokens, "seconds_incl_startup": round(s, 2),
                    "tokens_per_s_incl_startup": round(tokens / s, 1),
                    "note": "prompt generic/chat (our rendering and parsing); the model stops at its own EOS "
                            "here, so tokens differ from the bare 128/prompt: compare tokens/s"}
    out["stage_over_bare_batch_32"] = round(out["stage"]["tokens_per_s_incl_startup"]
                                            / out["bare"]["batch_32"]["tokens_per_s"], 3)
    ray.shutdown()
    return out


def part_gradcache(args) -> dict:
    path = Path(tempfile.mkdtemp()) / "gradcache.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_gradcache.py"), "--batches", *map(str, args.gc_batches),
           "--negatives", "3", "--repeats", "2", "--json", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.gc_timeout)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return {"command": " ".join(cmd[1:]), "rows": json.loads(path.read_text())}


def part_faiss(args) -> dict:
    import numpy as np

    from pipelines.stages.index import IndexConfig, VectorIndex

    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((args.faiss_n, 384), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    queries = vecs[rng.choice(args.faiss_n, 10_000, replace=False)]
    ids = [str(i) for i in range(args.faiss_n)]
    out = {"n": args.faiss_n, "dim": 384, "queries": len(queries), "k": 10}
    for kind in ("flat", "ivf"):
        t0 = time.perf_counter()
        index = VectorIndex.from_vectors(ids, vecs, IndexConfig(kind=kind))  # GPU when GPU faiss sees one
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        index.search(queries, k=10)
        search = time.perf_counter() - t0
        out[kind] = {"on_gpu": index.on_gpu, "build_s": round(build, 2), "search_s": round(search, 3),
                     "queries_per_s": round(len(queries) / search, 1)}
    return out


PARTS = {"llm": part_llm, "gradcache": part_gradcache, "faiss": part_faiss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("gpu.json"))
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    ap.add_argument("--llm-rows", type=int, default=64)
    ap.add_argument("--llm-layers", type=int, default=8)
    ap.add_argument("--llm-hidden", type=int, default=1024)
    ap.add_argument("--gc-batches", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--gc-timeout", type=int, default=180)
    ap.add_argument("--faiss-n", type=int, default=1_000_000)
    args = ap.parse_args()

    import torch

    result = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no CUDA)",
              "torch": torch.__version__}
    for name in args.parts:
        t0 = time.perf_counter()
        try:
            result[name] = PARTS[name](args)
        except Exception as e:  # one part's failure (a missing package, no GPU) is its figure
            result[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-1500:]}
        result[name]["part_seconds"] = round(time.perf_counter() - t0, 1)
        args.out.write_text(json.dumps(result, indent=1))
        print(json.dumps({name: result[name]}, indent=1)[:3000], flush=True)


if __name__ == "__main__":
    main()
