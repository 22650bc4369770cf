"""``synthrag train retriever``: fine-tune an embedding model on training lists (Ray Train)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from pipelines.cli.app import train_app


@train_app.command("retriever")
def train_retriever_cmd(
    ctx: typer.Context,
    data: list[Path] = typer.Option(..., "--data", help="run directory (retrieval_lists + chunks) "
                                    "or a .jsonl/.parquet file of lists with inline texts; repeat "
                                    "to train on several runs or methods at once"),
    weight: Optional[list[float]] = typer.Option(
        None, "--weight", help="one per --data, in order: 2 repeats that source's lists twice, "
                               "0.5 keeps a seeded half (default 1 each)"),
    base: str = typer.Option("embedded", "--base", help="sentence-transformers dir or 'embedded'"),
    out: Path = typer.Option(..., "--out", help="output model directory; rerun to resume"),
    loss: str = typer.Option("combined", "--loss", help="contrastive|listwise|combined|pairwise"),
    epochs: int = typer.Option(3, "--epochs"),
    batch_size: int = typer.Option(32, "--batch-size", help="queries per step, all workers"),
    chunk_size: int = typer.Option(32, "--chunk-size", help="texts per GradCache chunk"),
    loss_chunk_size: Optional[int] = typer.Option(
        None, "--loss-chunk-size", help="query rows per loss block (bounds the score matrix)"),
    workers: int = typer.Option(1, "--workers"),
    cpus_per_worker: int = typer.Option(1, "--cpus-per-worker"),
    lr: float = typer.Option(2e-5, "--lr"),
    warmup_ratio: float = typer.Option(0.1, "--warmup-ratio"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps"),
    negatives: int = typer.Option(19, "--negatives", help="K hard negatives per query"),
    fn_fraction: float = typer.Option(0.6, "--fn-fraction",
                                      help="drop candidates above this fraction of the "
                                           "positive's teacher score (0 disables)"),
    fn_scope: str = typer.Option("contrastive", "--fn-scope",
                                 help="contrastive: false negatives are no contrastive/pairwise "
                                      "negatives but keep their teacher scores in the listwise "
                                      "KL (Tamber et al.); all: dropped from every loss"),
    patience: int = typer.Option(2, "--patience"),
    min_delta: float = typer.Option(0.0, "--min-delta"),
    max_length: Optional[int] = typer.Option(None, "--max-length"),
    query_prefix: str = typer.Option("", "--query-prefix"),
    passage_prefix: str = typer.Option("", "--passage-prefix"),
    gpu: Optional[bool] = typer.Option(None, "--gpu/--cpu", help="default: GPUs if present"),
    seed: int = typer.Option(0, "--seed"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join"),
    preset: Optional[str] = typer.Option(
        None, "--preset", help="a paper's recipe; flags given with it win. tamber: combined loss, "
                               "lr 2e-4, 4,096 queries per batch, up to 30 epochs, patience 2, "
                               "K 19, false negatives > 0.6 out of the contrastive term"),
) -> None:
    """Train a retriever with GradCache on Ray Train and export a sentence-transformers model."""
    from pipelines.core.config import validate
    from training.retriever import RetrieverTrainConfig, train_retriever

    settings = dict(
        data=data, data_weights=weight or None, base=base, out=out, loss=loss, epochs=epochs, batch_size=batch_size,
        chunk_size=chunk_size, loss_chunk_size=loss_chunk_size, workers=workers,
        cpus_per_worker=cpus_per_worker, lr=lr, warmup_ratio=warmup_ratio, max_steps=max_steps,
        negatives=negatives, fn_fraction=fn_fraction or None, fn_scope=fn_scope,
        patience=patience, min_delta=min_delta, max_length=max_length, query_prefix=query_prefix,
        passage_prefix=passage_prefix, use_gpu=gpu, seed=seed)
    if preset is not None:  # the preset fills what was not given on the command line
        flag = {"use_gpu": "gpu", "data_weights": "weight"}  # (typer may bundle its own click: compare the source by name)
        settings = {k: v for k, v in settings.items()
                    if getattr(ctx.get_parameter_source(flag.get(k, k)), "name", "") != "DEFAULT"}
        settings["preset"] = preset
    cfg = validate(RetrieverTrainConfig, settings, source="train retriever flags")
    metrics = train_retriever(cfg, address=address)  # a DataError is one line (pipelines.cli.main)
    summary = {k: metrics[k] for k in ("best_epoch", "best_dev_loss", "stopped_early",
                                       "epochs_run", "steps", "starts")}
    typer.echo(json.dumps({"model": str(cfg.out.resolve()), **summary}))
