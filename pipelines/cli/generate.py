"""``synthrag generate``: answer held-back chat records with a trained generator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from pipelines.cli.app import app


@app.command("generate")
def generate_cmd(
    model: str = typer.Option("embedded", "--model", help="A transformers model directory (e.g. OUT/model of "
                              "`synthrag train generator`) or 'embedded'."),
    data: Path = typer.Option(..., "--data", help="JSONL chat records, or a run directory with exports/sft*.jsonl."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write predictions (JSONL); default DATA.predictions.jsonl"),
    engine: str = typer.Option("transformers", "--engine", help="transformers | vllm"),
    limit: Optional[int] = typer.Option(None, "--limit"),
    max_tokens: int = typer.Option(256, "--max-tokens"),
    address: Optional[str] = typer.Option(None, "--address"),
):
    """Answer each record's last user turn; write prediction next to the reference."""
    from actors.llm import LLMConfig
    from cluster.runtime import connect
    from pipelines.stages.generate import generate, load_records

    records = load_records(data, limit)
    llm = LLMConfig(engine="embedded" if model == "embedded" else engine, model=model, max_retries=0,
                    max_tokens=max_tokens)
    connect(address)
    rows = generate(records, llm)
    out = out or (data if data.is_file() else data / "exports" / "sft").with_suffix(".predictions.jsonl")
    with open(out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    answered = sum(r["prediction"] is not None for r in rows)
    typer.echo(json.dumps({"records": len(rows), "answered": answered, "out": str(out)}))
