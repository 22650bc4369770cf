"""Commands that turn a corpus into data: ``synthrag ingest`` and ``synthrag run METHOD`` (one per\nmethod in :mod:`pipelines.registry`)."""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from pipelines.cli.app import app, run_app

CorpusOpt = typer.Option(..., "--corpus", help="A file or folder of .txt/.md/.html/.jsonl/.parquet documents.")
OutOpt = typer.Option(..., "--out", help="The run directory to write (created if needed; reruns resume).")
ConfigOpt = typer.Option(None, "--config", help="YAML run config (see configs/).")
SetOpt = typer.Option(None, "--set", help="Override a config field: --set llm.batch_size=4 (repeatable).")
AddressOpt = typer.Option(None, "--address", help="Ray cluster to join (default: RAY_ADDRESS or a local Ray).")


def open_run(out: Path, command: str, config: Optional[Path], overrides: Optional[list[str]], address: Optional[str]):
    """The validated config and the opened run directory. Everything a person can get wrong (the
    config, its model paths, the run directory, the address) is checked before Ray starts."""
    from cluster.runtime import connect
    from pipelines.core.run import Run, check_run_dir
    from pipelines.registry import check_models, load_config

    cfg = load_config(config, overrides)
    check_models(cfg)
    check_run_dir(out.expanduser().resolve(), command)
    connect(address)
    run = Run.open(out, command=command, config=cfg.model_dump(mode="json"))
    return cfg, run


def finish(run, t0: float) -> None:
    run.manifest["wall_seconds"] = round(time.perf_counter() - t0, 1)
    run.finish("done")
    try:
        from pipelines.report import write_report

        write_report(run.root)
    except ImportError:
        pass
    for line in summary_lines(run):
        typer.echo(line)


def summary_lines(run) -> list[str]:
    """What a person reads at the end: the funnel in one line, then where the outputs are."""
    counts = [(t, run.count(t)) for t in ("documents", "chunks", "examples", "retrieval_lists") if run.has(t)]
    rejected: dict[str, int] = {}
    for s in run.manifest["stages"]:
        for reason, n in s["rejected"].items():
            rejected[reason] = rejected.get(reason, 0) + n
    top = ", ".join(f"{r} {n}" for r, n in sorted(rejected.items(), key=lambda kv: -kv[1])[:4])
    funnel = " → ".join(f"{n} {t.replace('_', ' ')}" for t, n in counts)
    dropped = f"; {sum(rejected.values())} rows rejected ({top}{', ...' if len(rejected) > 4 else ''})" if rejected else ""
    outputs = [f"{name}/" for name in ("examples", "retrieval_lists", "exports", "rejects") if run.path(name).exists()]
    return [f"[synthrag] done in {run.manifest['wall_seconds']:.0f}s: {funnel}{dropped}",
            f"[synthrag] outputs in {run.root}/: {', '.join([*outputs, 'manifest.json', 'report.html'])}"]


def execute(command: str, corpus: Path, out: Path, config, overrides, address, method=None, limit=None) -> None:
    """Ingest the corpus, then run ``method(run, cfg, limit=...)``; the manifest records failure.
    The method's LLM stages share warm servers (one per model, :mod:`actors.llm_pool`)."""
    from actors import llm_pool
    from pipelines.core.run import DiskFull, is_disk_full
    from pipelines.stages.ingest import ingest as run_ingest

    t0 = time.perf_counter()
    if not Path(corpus).expanduser().exists():
        raise FileNotFoundError(f"corpus path {corpus} does not exist")
    cfg, run = open_run(out, command, config, overrides, address)
    try:
        with interrupt_on_sigterm():
            run_ingest(run, corpus, cfg.ingest)
            if method is not None:
                with llm_pool.warm():
                    method(run, cfg, limit=limit)
        finish(run, t0)
    except KeyboardInterrupt:
        run.finish("interrupted")
        raise RunInterrupted(f"interrupted; finished stages and staged rows are kept in {run.root}: "
                             f"rerun the same command to resume") from None
    except BaseException as e:
        if not is_disk_full(e):
            run.finish("failed")
            raise
        try:
            run.finish("failed: disk full")
        except OSError:
            pass  # the manifest on disk is the last one saved: it lists every committed stage
        raise DiskFull(f"no space left on the disk of {run.root}; committed stages are kept: free space "
                       f"(or copy the folder elsewhere) and rerun the same command to resume") from e


class RunInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped a run; its manifest says ``interrupted`` and a rerun resumes."""


@contextmanager
def interrupt_on_sigterm():
    """SIGTERM (a scheduler's stop, ``kill``, a spot notice) stops the run the way Ctrl-C does:
    as a KeyboardInterrupt in the driver, so the manifest records it. Ray's own driver handler
    would exit at once (``sys.exit``), leaving the manifest saying ``running``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
def ingest(corpus: Path = CorpusOpt, out: Path = OutOpt, config: Optional[Path] = ConfigOpt,
           set_: Optional[list[str]] = typer.Option(None, "--set", help=SetOpt.help), address: Optional[str] = AddressOpt):
    """Read, clean, chunk, deduplicate and sentence-split a corpus into RUN/."""
    execute("ingest", corpus, out, config, set_, address)


def _run_command(name: str, summary: str, limit_help: str, options: dict[str, str]):
    """``synthrag run NAME``: ingest, then the registered method's pipeline. A method's own
    flags (``Method.options``: ``--seeds FILE`` → ``scarlet.seeds_file``) are ``--set`` overrides
    by another name, so the config stays the one place its settings are validated."""

    def command(ctx: typer.Context, corpus: Path = CorpusOpt, out: Path = OutOpt, config: Optional[Path] = ConfigOpt,
                limit: Optional[int] = typer.Option(None, "--limit", help=limit_help),
                set_: Optional[list[str]] = typer.Option(None, "--set", help=SetOpt.help),
                address: Optional[str] = AddressOpt):
        from pipelines.registry import METHODS

        overrides = list(set_ or []) + method_flags(name, options, ctx.args)
        execute(f"run {name}", corpus, out, config, overrides, address, METHODS[name].run, limit)

    flags = "".join(f"\n\n{flag} VALUE: sets {key}" for flag, key in options.items())
    command.__doc__ = summary + flags
    return command


def method_flags(name: str, options: dict[str, str], args: list[str]) -> list[str]:
    """``--flag VALUE`` / ``--flag=VALUE`` pairs of a method's own options as ``KEY=VALUE``."""
    out, i = [], 0
    while i < len(args):
        flag, _, value = args[i].partition("=")
        if flag not in options:
            known = ", ".join(options) or "none"
            raise typer.BadParameter(f"unknown option {flag!r} for `run {name}` (its own options: {known})")
        if not value:
            if i + 1 >= len(args):
                raise typer.BadParameter(f"{flag} needs a value")
            value, i = args[i + 1], i + 1
        out.append(f"{options[flag]}={value}")
        i += 1
    return out


def _register_methods() -> None:
    from pipelines.registry import METHODS

    for m in METHODS.values():
        extra = {"allow_extra_args": True, "ignore_unknown_options": True} if m.options else None
        run_app.command(m.name, context_settings=extra)(_run_command(m.name, m.summary, m.limit_help, m.options))


_register_methods()
