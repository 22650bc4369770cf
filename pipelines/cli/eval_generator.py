"""``synthrag eval generator``: RAGSynth's CSG score of a generator's answers on a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from pipelines.cli.app import eval_app


@eval_app.command("generator")
def eval_generator(
    run: Path = typer.Option(..., "--run", exists=True, file_okay=False, help="a `synthrag run ragsynth` directory"),
    answers: Path = typer.Option(..., "--answers", exists=True, dir_okay=False,
                                 help="JSONL answers: example_id|record_id + answer|prediction [+ citations]; "
                                      "e.g. RUN/exports/ragsynth_reference_answers.jsonl or `synthrag generate` output"),
    judge: str = typer.Option("likelihood", "--judge", help="likelihood (small models) | yes-no (the seed's judge)"),
    model: str = typer.Option("embedded", "--model", help="judge model: 'embedded' or a local model directory"),
    engine: str = typer.Option("embedded", "--engine", help="embedded | transformers | vllm"),
    margin: float = typer.Option(1.0, "--margin", help="likelihood judge: PMI (nats/token) above which a fact is stated"),
    missing_margin: float = typer.Option(0.5, "--missing-margin",
                                         help="likelihood judge: PMI of 'information is missing' that counts"),
    threshold: float = typer.Option(0.5, "--threshold", help="yes-no judge: P(yes) that counts"),
    limit: Optional[int] = typer.Option(None, "--limit", help="evaluate at most N answered examples"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the summary JSON here, and per-example "
                                                           "scores next to it (.examples.jsonl)"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join"),
) -> None:
    """CSG = (C_comp + C_under + C_cite) / 3 as RAGSynth's Eq. 4-6: overall, per completeness level and kind.

    The summary is also saved as RUN/evals/csg_<answers file>.json, which the run report shows.
    """
    from actors.llm import LLMConfig
    from cluster.runtime import connect
    from pipelines.eval.generator import evaluate_generator

    if judge not in ("likelihood", "yes-no"):
        raise typer.BadParameter("--judge must be 'likelihood' or 'yes-no'")
    llm = LLMConfig(engine=engine if model != "embedded" else "embedded", model=model, max_retries=0)
    connect(address)
    summary, per_example = evaluate_generator(run, answers, llm=llm, judge=judge, margin=margin,
                                              missing_margin=missing_margin, threshold=threshold, limit=limit)
    summary.update(run=str(run), answers=str(answers), model=model)
    text = json.dumps(summary)
    evals = run / "evals"
    evals.mkdir(exist_ok=True)
    (evals / f"csg_{answers.stem}.json").write_text(text + "\n")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        with open(out.with_suffix(".examples.jsonl"), "w", encoding="utf-8") as f:
            for r in per_example:
                f.write(json.dumps(r) + "\n")
    typer.echo(text)
