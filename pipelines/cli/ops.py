"""Operations commands: ``synthrag submit`` (a command as a Ray job) and ``synthrag report``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from pydantic import ValidationError

from cluster.submit import DEFAULT_ADDRESS
from pipelines.cli.app import app


@app.command(
    "submit",
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)
def submit_cmd(
    command: List[str] = typer.Argument(
        ..., metavar="-- COMMAND...", help="What the job runs, e.g. `-- synthrag run ...`."),
    address: str = typer.Option(
        DEFAULT_ADDRESS, "--address", envvar="RAY_ADDRESS",
        help=f"Ray dashboard URL of the cluster, the Jobs API (default {DEFAULT_ADDRESS})."),
    working_dir: Path = typer.Option(
        Path("."), "--working-dir", help="Code uploaded with the job."),
    runtime_env: Optional[Path] = typer.Option(
        None, "--runtime-env",
        help="Runtime env YAML merged over the defaults (e.g. cluster/runtime_env.yaml)."),
    pip: bool = typer.Option(
        False, "--pip", help="Install synthrag's dependencies in the job (bare cluster)."),
    embedded_llm: bool = typer.Option(
        False, "--embedded-llm", help="Ship the embedded SmolLM2 GGUF with the job."),
    no_wait: bool = typer.Option(
        False, "--no-wait", help="Return after submitting instead of following the logs."),
    submission_id: Optional[str] = typer.Option(None, "--submission-id"),
    entrypoint_num_cpus: Optional[float] = typer.Option(None, "--entrypoint-num-cpus"),
    entrypoint_num_gpus: Optional[float] = typer.Option(None, "--entrypoint-num-gpus"),
) -> None:
    """Run a command on a Ray cluster with the Jobs API, follow its logs, exit with its status."""
    from cluster.submit import SubmitConfig, submit

    try:
        cfg = SubmitConfig(
            address=address, command=command, working_dir=working_dir,
            runtime_env_file=runtime_env, pip=pip, embedded_llm=embedded_llm, wait=not no_wait,
            submission_id=submission_id, entrypoint_num_cpus=entrypoint_num_cpus,
            entrypoint_num_gpus=entrypoint_num_gpus)
    except ValidationError as e:
        raise typer.BadParameter("; ".join(err["msg"] for err in e.errors())) from e
    raise typer.Exit(submit(cfg))


@app.command("report")
def report_cmd(
    run: Path = typer.Argument(..., help="Run directory (holds manifest.json)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the page (default: RUN/report.html)."),
    examples: int = typer.Option(12, "--examples", min=0, help="Examples shown."),
    rejects: int = typer.Option(5, "--rejects", min=0, help="Reject samples per stage."),
) -> None:
    """Write RUN/report.html: funnel, reject reasons, score plots, cited examples, timings."""
    from pipelines.report import ReportConfig, write_report

    if not run.is_dir():
        raise typer.BadParameter(f"{run} is not a directory", param_hint="RUN")
    path = write_report(run, out=out, config=ReportConfig(examples=examples, rejects=rejects))
    typer.echo(str(path))
