"""``synthrag train generator``: supervised fine-tuning of the generator on chat records.

Registers on :data:`pipelines.cli.app.train_app` when imported. Rerunning the same command with
the same ``--out`` resumes from the last Ray Train checkpoint.
"""

from __future__ import annotations

import json
from typing import Optional

import typer

from pipelines.cli.app import app, train_app


@train_app.command("generator")
def train_generator(
    data: str = typer.Option(..., help="chat JSONL {'messages': [...]}, a folder, or a run dir "
                                        "(uses RUN/exports/sft*.jsonl)"),
    base: str = typer.Option("embedded", help="local transformers model dir, or 'embedded'"),
    out: str = typer.Option(..., help="output dir: model/, metrics.json, data/, ray/ checkpoints"),
    deepspeed: Optional[str] = typer.Option(None, help="zero2 | zero3 | path to a DeepSpeed JSON; "
                                                        "omit for plain DDP"),
    lora: bool = typer.Option(False, "--lora", help="train LoRA adapters (merged on export)"),
    workers: int = typer.Option(2, help="Ray Train workers (one per GPU on a cluster)"),
    epochs: int = typer.Option(1),
    max_steps: Optional[int] = typer.Option(None, help="cap on optimizer steps"),
    lr: Optional[float] = typer.Option(None, help="default 2e-5 (2e-4 with --lora)"),
    batch_size: int = typer.Option(4, help="micro-batch per worker"),
    grad_accum: int = typer.Option(1),
    max_length: int = typer.Option(2048, help="tokens; longer records are cut (and counted)"),
    packing: bool = typer.Option(False, "--packing", help="pack examples into max-length rows"),
    dev_data: Optional[str] = typer.Option(None, help="dev JSONL (default: split of --data)"),
    dev_fraction: float = typer.Option(0.1),
    checkpoint_every: Optional[int] = typer.Option(None, help="optimizer steps between checkpoints "
                                                              "(always at epoch ends)"),
    offload_optimizer: bool = typer.Option(False, "--offload-optimizer"),
    offload_params: bool = typer.Option(False, "--offload-params", help="ZeRO-3 only"),
    gradient_checkpointing: bool = typer.Option(True, "--gradient-checkpointing/--no-gradient-checkpointing"),
    gpu: Optional[bool] = typer.Option(None, "--gpu/--cpu", help="default: GPUs if the cluster has them"),
    cpus_per_worker: int = typer.Option(1),
    seed: int = typer.Option(0),
    address: Optional[str] = typer.Option(None, help="Ray address to join (default: local Ray)"),
) -> None:
    """Fine-tune a causal LM on chat records (loss on assistant turns only) with Ray Train."""
    from training.sft import SFTConfig, train

    cfg = SFTConfig(
        data=data, base=base, out=out, deepspeed=deepspeed, lora=lora, workers=workers,
        epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size, grad_accum=grad_accum,
        max_length=max_length, packing=packing, dev_data=dev_data, dev_fraction=dev_fraction,
        checkpoint_every=checkpoint_every, offload_optimizer=offload_optimizer,
        offload_params=offload_params, gradient_checkpointing=gradient_checkpointing,
        use_gpu=gpu, cpus_per_worker=cpus_per_worker, seed=seed, address=address)
    metrics = train(cfg)
    summary = {k: metrics[k] for k in ("engine", "lora", "device", "global_step", "epochs",
                                        "sessions", "model_dir")}
    typer.echo(json.dumps(summary, indent=2))


def main() -> None:  # ``python -m pipelines.cli.train_generator train generator ...``
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
