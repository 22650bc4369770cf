"""``synthrag eval tableqa`` and ``synthrag eval multihop``: Source2Synth's two evaluators.

Both answer with a model (``embedded`` or a local directory, e.g. ``OUT/model`` of ``synthrag
train generator --data RUN``), print a table of the figures and the summary JSON, and with
``--out`` write the summary there and one line per question next to it (``.examples.jsonl``).
The scoring is in :mod:`pipelines.source2synth.evaluate`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from pipelines.cli.app import eval_app


def _llm(model: str, engine: str, max_tokens: int):
    from actors.llm import LLMConfig

    return LLMConfig(engine="embedded" if model == "embedded" else engine, model=model, max_retries=0,
                     max_tokens=max_tokens)


def _write(summary: dict, per: list[dict], out: Optional[Path], keys: list[str]) -> None:
    from pipelines.source2synth.evaluate import table_text

    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary) + "\n")
        with open(out.with_suffix(".examples.jsonl"), "w", encoding="utf-8") as f:
            for r in per:
                f.write(json.dumps(r, ensure_ascii=False, default=list) + "\n")
    typer.echo(table_text(summary, keys))
    typer.echo(json.dumps(summary))


@eval_app.command("tableqa")
def eval_tableqa(
    model: str = typer.Option("embedded", "--model", help="'embedded' or a local model directory"),
    questions: Path = typer.Option(..., "--questions", exists=True, dir_okay=False,
                                   help="WikiTableQuestions TSV (id, utterance, context, targetValue)"),
    tables: Path = typer.Option(..., "--tables", exists=True,
                                help="the tables: CSV/JSONL/Parquet/SQLite file or folder (context = table_id)"),
    mode: str = typer.Option("answer", "--mode", help="answer: score the model's answer | sql: execute its SQL"),
    limit: Optional[int] = typer.Option(None, "--limit", help="the first N questions"),
    rows: int = typer.Option(10, "--rows", help="table rows shown in the prompt (at most 10)"),
    engine: str = typer.Option("transformers", "--engine", help="transformers | vllm (for a model directory)"),
    max_tokens: int = typer.Option(160, "--max-tokens"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the summary JSON here"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join"),
) -> None:
    """Table QA denotation accuracy (WTQ convention); --mode sql runs the model's SQL in the sandbox."""
    from cluster.runtime import connect
    from pipelines.source2synth.evaluate import evaluate_tableqa
    from pipelines.source2synth.tables import TableError

    if mode not in ("answer", "sql"):
        raise typer.BadParameter("--mode must be 'answer' or 'sql'")
    connect(address)
    try:
        summary, per = evaluate_tableqa(questions, tables, llm=_llm(model, engine, max_tokens), mode=mode,
                                        limit=limit, rows=rows)
    except (TableError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    summary.update(questions=str(questions), tables=str(tables))
    _write(summary, per, out, ["n", "correct", "missing", "accuracy"])


@eval_app.command("multihop")
def eval_multihop(
    model: str = typer.Option("embedded", "--model", help="'embedded' or a local model directory"),
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False,
                              help="HotpotQA-format JSONL: question, answer, context {title, sentences}"),
    passages: str = typer.Option("all", "--passages", help="all: the distractor setting | gold: supporting only"),
    limit: Optional[int] = typer.Option(None, "--limit", help="the first N questions"),
    engine: str = typer.Option("transformers", "--engine", help="transformers | vllm (for a model directory)"),
    max_tokens: int = typer.Option(160, "--max-tokens"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the summary JSON here"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join"),
) -> None:
    """Multi-hop QA: HotpotQA EM and F1, and the paper's soft EM (reference contained in the answer)."""
    from cluster.runtime import connect
    from pipelines.source2synth.evaluate import evaluate_multihop

    connect(address)
    try:
        summary, per = evaluate_multihop(data, llm=_llm(model, engine, max_tokens), limit=limit, passages=passages)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    summary.update(data=str(data))
    _write(summary, per, out, ["n", "em", "f1", "soft_em"])
