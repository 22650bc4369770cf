"""The Typer applications every command module registers on (see pipelines/cli/__init__.py)."""

import os

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="synthrag: synthetic RAG training data and RAG component training on Ray.")
run_app = typer.Typer(no_args_is_help=True, help="Run a method pipeline into a run directory.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate retrievers and generators.")
train_app = typer.Typer(no_args_is_help=True, help="Train retrievers and generators on Ray Train.")
serve_app = typer.Typer(no_args_is_help=True, help="Serve models on Ray Serve.")
app.add_typer(run_app, name="run")
app.add_typer(eval_app, name="eval")
app.add_typer(train_app, name="train")
app.add_typer(serve_app, name="serve")


@app.callback()
def _options(verbose: bool = typer.Option(False, "--verbose", "-v",
                                          help="Show Ray's own log lines and progress bars (off by default).")):
    if verbose:
        os.environ["SYNTHRAG_VERBOSE"] = "1"  # read by cluster.runtime.connect, here and in workers
