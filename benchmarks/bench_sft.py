"""Generator SFT throughput and loss endpoints for each engine (DDP, ZeRO-2, ZeRO-3, LoRA).

Runs ``training.sft.train`` once per path on the same data and prints, per path: optimizer
steps/s (training loop only, start-up excluded), first and last step loss, per-epoch train/dev
loss, and the wall time of the whole run (Ray start, model load, DeepSpeed init, export).

    .venv/bin/python benchmarks/bench_sft.py                      # embedded SmolLM2-135M, CPU
    .venv/bin/python benchmarks/bench_sft.py --paths ddp,zero3 --max-steps 20 --gpu

Without ``--data`` a synthetic grounded-QA set (half multi-turn) is written to the work dir.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("SYNTHRAG_PROGRESS", "0")

PATHS = {
    "ddp": dict(deepspeed=None, lora=False),
    "zero2": dict(deepspeed="zero2", lora=False),
    "zero3": dict(deepspeed="zero3", lora=False),
    "lora": dict(deepspeed=None, lora=True),
    "zero2-lora": dict(deepspeed="zero2", lora=True),
}


def synthetic(path: Path, n: int) -> Path:
    with open(path, "w") as fh:
        for i in range(n):
            country, capital = f"Country{i}", f"City{i * 7 % 101}"
            msgs = [{"role": "system", "content": "Answer from the context; cite it."},
                    {"role": "user", "content": f"Context: [1] The capital of {country} is "
                                                f"{capital}.\nWhat is the capital of {country}?"},
                    {"role": "assistant", "content": f"The capital of {country} is {capital} [1]."}]
            if i % 2:
                msgs += [{"role": "user", "content": "Are you sure?"},
                         {"role": "assistant", "content": f"Yes, [1] says {capital}."}]
            fh.write(json.dumps({"messages": msgs}) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="embedded")
    ap.add_argument("--data", default=None)
    ap.add_argument("--records", type=int, default=40)
    ap.add_argument("--paths", default="ddp,zero2,zero3,lora")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--workdir", default=None, help="keep outputs here (default: a temp dir)")
    args = ap.parse_args()

    from training.sft import SFTConfig, train

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_sft_"))
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else synthetic(work / "sft.jsonl", args.records)
    rows = []
    for name in args.paths.split(","):
        out = work / name
        shutil.rmtree(out, ignore_errors=True)
        cfg = SFTConfig(data=str(data), base=args.base, out=str(out), workers=args.workers,
                        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                        max_length=args.max_length, lr=args.lr, use_gpu=args.gpu or None,
                        **PATHS[name])
        t0 = time.perf_counter()
        m = train(cfg)
        wall = time.perf_counter() - t0
        sess = m["sessions"][-1]
        row = {"path": name, "device": m["device"], "workers": m["workers"],
               "steps": m["global_step"], "steps_per_s": sess["steps_per_s"],
               "loss_first": m["steps"][0]["loss"], "loss_last": m["steps"][-1]["loss"],
               "epochs": [(e["train_loss"], e["dev_loss"]) for e in m["epochs"]],
               "wall_s": round(wall, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\npath        device  steps  steps/s  loss first → last   train/dev per epoch   wall s")
    for r in rows:
        ep = "  ".join(f"{t:.3f}/{d if d is None else round(d, 3)}" for t, d in r["epochs"])
        print(f"{r['path']:<11} {r['device']:<7} {r['steps']:>5}  {r['steps_per_s']:>7.3f}  "
              f"{r['loss_first']:>7.3f} → {r['loss_last']:<7.3f}  {ep:<20}  {r['wall_s']:>6}")
    print(f"\noutputs in {work}")


if __name__ == "__main__":
    main()
