"""``synthrag eval attribution``: rank each question's passages by utility, score against gold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from pipelines.cli.app import eval_app


@eval_app.command("attribution")
def eval_attribution(
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False,
                              help="HotpotQA distractor-setting jsonl, or jsonl {question, answer, passages, gold}"),
    method: Optional[list[str]] = typer.Option(None, "--method",
                                               help="perturbation | loo | similarity | random (repeatable; default all)"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="the first N questions"),
    masks: int = typer.Option(64, "--masks", min=2, help="perturbation keep-masks per question (paper: 64)"),
    target: str = typer.Option("logit", "--target", help="logit (the paper's Eq. 5) or logprob"),
    ridge_lambda: float = typer.Option(1.0, "--lambda", min=0.0, help="ridge regularisation"),
    config: Optional[Path] = typer.Option(None, "--config", help="run config whose llm: section picks the generator"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override a config field, e.g. llm.dtype=bf16"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the JSON here"),
):
    """NDCG@1/@5 and Recall@2 of the gold passages, per attribution method, side by side."""
    from rich.progress import Progress

    from pipelines.registry import load_config
    from pipelines.scarlet.gti import (
        METHODS,
        Attributor,
        evaluate,
        read_questions,
        table,
    )

    if target not in ("logit", "logprob"):
        raise typer.BadParameter("--target is logit or logprob")
    cfg = load_config(config, set_)
    questions = read_questions(data, limit)
    methods = method or list(METHODS)
    att = Attributor(cfg.llm, masks=masks, target=target, ridge_lambda=ridge_lambda, seed=cfg.seed)
    with Progress(transient=True) as bar:
        task = bar.add_task("attribution", total=len(questions) * len(methods))
        results = evaluate(questions, att, methods, progress=lambda m: bar.update(task, advance=1, description=m))
    summary = {"data": str(data), "questions": len(questions), "masks": masks, "target": target,
               "model": cfg.llm.model, "methods": results}
    typer.echo(table(results))
    typer.echo(json.dumps(summary))
    if out:
        out.write_text(json.dumps(summary, indent=2))
