"""``synthrag eval factuality``: PrismRAG's factuality score (accuracy − hallucination rate) of
a generator answering from references, optionally swept over the number of references."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from pipelines.cli.app import eval_app


def _llm(model: str, engine: str):
    from actors.llm import LLMConfig

    if model == "embedded":
        return LLMConfig()
    return LLMConfig(engine=engine, model=model)


@eval_app.command("factuality")
def eval_factuality(
    model: str = typer.Option(..., "--model", help="the generator: 'embedded' or a local model directory "
                                                   "(e.g. `train generator --out DIR`'s DIR/model)"),
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False,
                              help="CRAG jsonl(.bz2), HotpotQA distractor jsonl, or {question, answer, references} jsonl"),
    references: str = typer.Option("5", "--references", help="references shown: N, or a sweep N,N,... (Figure 1)"),
    judge: str = typer.Option("rule", "--judge", help="who labels answers the rules leave open: 'rule' (ground-truth "
                                                      "words in the answer), 'embedded', or a local model directory"),
    engine: str = typer.Option("transformers", "--engine", help="engine for a model directory: transformers | vllm"),
    limit: Optional[int] = typer.Option(None, "--limit", help="evaluate the first N questions"),
    answer_format: str = typer.Option("json", "--answer-format",
                                      help="json (guided {answer}) | text (the SFT prompt; the answer after '## Answer:')"),
    rank: str = typer.Option("overlap", "--rank", help="reference order: overlap (with the question) | given"),
    max_reference_words: int = typer.Option(300, "--max-reference-words", help="cut each reference to this many words"),
    context_words: int = typer.Option(900, "--context-words", help="word budget of all references shown together"),
    allow_truncated: bool = typer.Option(False, "--allow-truncated",
                                         help="a .bz2 cut short: evaluate the rows before the cut (counted)"),
    out: Path = typer.Option(Path("factuality"), "--out", help="output folder: summary.json, verdicts.jsonl, "
                                                              "curve.md, report.html"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join"),
) -> None:
    """Accurate / hallucinated / missing per answer (rules, then an LLM judge); factuality = accuracy − hallucination."""
    from cluster.runtime import connect
    from pipelines.eval.factuality import evaluate, write_outputs
    from pipelines.eval.factuality_data import TruncatedInput, read_items

    try:
        sweep = sorted({int(x) for x in references.split(",") if x.strip()})
    except ValueError:
        raise typer.BadParameter("--references takes N or N,N,... (positive integers)") from None
    if not sweep or sweep[0] < 1:
        raise typer.BadParameter("--references takes positive integers")
    if answer_format not in ("json", "text") or rank not in ("overlap", "given"):
        raise typer.BadParameter("--answer-format is json|text, --rank is overlap|given")
    try:
        items, counts = read_items(data, limit=limit, allow_truncated=allow_truncated, rank=rank)
    except TruncatedInput as e:
        typer.echo(f"[synthrag] error: {e}", err=True)
        raise typer.Exit(2) from None
    if not items:
        typer.echo(f"[synthrag] error: no usable question in {data} ({dict(counts)})", err=True)
        raise typer.Exit(2)
    connect(address)
    result = evaluate(items, model=_llm(model, engine), judge=None if judge == "rule" else _llm(judge, engine),
                      sweep=sweep, max_reference_words=max_reference_words, context_words=context_words, answer_format=answer_format)
    summary = {"data": str(data), "model": model, "judge": judge, "input": dict(counts), "references": sweep,
               "answer_format": answer_format, "rank": rank, "references_truncated": result["references_truncated"],
               "curve": result["curve"]}
    paths = write_outputs(out, summary, result["verdicts"])
    from pipelines.eval.factuality import curve_table

    typer.echo(curve_table(result["curve"]))
    typer.echo(json.dumps({"input": dict(counts), "references_truncated": result["references_truncated"],
                           "outputs": paths}))
