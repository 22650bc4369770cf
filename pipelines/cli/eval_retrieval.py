"""``synthrag eval retrieval``: dense retrieval on a BEIR folder, scored by pytrec_eval.

Prints one JSON object (``ndcg@10``, ``recall@100``, ``mrr@10``, ``p@3``, ``num_queries``, and
what was run) on stdout; progress goes to stderr. ``--save-run`` writes the ranking as a TREC
run file, ``--out`` the JSON object to a file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from pipelines.cli.app import eval_app


@eval_app.command("retrieval")
def eval_retrieval(
    beir: Optional[Path] = typer.Option(None, "--beir", exists=True, file_okay=False,
                                        help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv"),
    run: Optional[Path] = typer.Option(None, "--run", exists=True, file_okay=False,
                                       help="a RAGSynth run: metrics per query type (original, rewrite, partial) "
                                            "on RUN/exports/beir"),
    model: str = typer.Option("embedded", "--model",
                              help="local sentence-transformers directory, or 'embedded'"),
    split: str = typer.Option("test", "--split", help="qrels split to evaluate"),
    save_run: Optional[Path] = typer.Option(None, "--save-run", help="write a TREC run file"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the JSON here"),
    k: int = typer.Option(100, "--k", min=1, help="documents retrieved per query"),
    query_prefix: Optional[str] = typer.Option(None, "--query-prefix",
                                               help="instruction before queries (BGE/E5)"),
    passage_prefix: Optional[str] = typer.Option(None, "--passage-prefix",
                                                 help="instruction before passages"),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="encoder batch size"),
    bf16: bool = typer.Option(False, "--bf16", help="bf16 autocast on CPU (faster, ~exact)"),
    index: str = typer.Option("auto", "--index", help="auto | flat | ivf | hnsw"),
    tag: str = typer.Option("synthrag", "--tag", help="run tag in the TREC file"),
) -> None:
    """Evaluate a bi-encoder on a BEIR folder or a RAGSynth run (NDCG@10, Recall@100, MRR@10, P@3)."""
    from actors.embedder import EmbedderSettings
    from pipelines.eval.retrieval import evaluate_beir, evaluate_run, write_trec_run
    from pipelines.stages.index import IndexConfig

    if (beir is None) == (run is None):
        raise typer.BadParameter("give exactly one of --beir DIR and --run RUN")
    settings = EmbedderSettings(model=model, query_prefix=query_prefix,
                                passage_prefix=passage_prefix, batch_size=batch_size,
                                cpu_bf16=bf16)
    t0 = time.perf_counter()
    if run is not None:
        by_type, ranking = evaluate_run(run, settings=settings, k=k, index_config=IndexConfig(kind=index))
        result = {**by_type, "model": model, "run": str(run), "k": k,
                  "seconds": round(time.perf_counter() - t0, 1)}
    else:
        metrics, ranking = evaluate_beir(beir, split=split, settings=settings, k=k,
                                         index_config=IndexConfig(kind=index))
        result = {**metrics, "model": model, "beir": str(beir), "split": split, "k": k,
                  "seconds": round(time.perf_counter() - t0, 1)}
    if save_run is not None:
        write_trec_run(ranking, save_run, tag=tag)
        result["run_file"] = str(save_run)
    text = json.dumps(result)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    typer.echo(text)
