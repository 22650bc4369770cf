"""The ``synthrag`` command line. Each area keeps its commands in its own module."""

from __future__ import annotations

import importlib
import os
import sys

from cluster.quiet import quiet_terminal
from cluster.runtime import verbose
from pipelines.cli.app import app

# Command modules register themselves on the apps in pipelines.cli.app when imported.
COMMAND_MODULES = [
    "pipelines.cli.run",
    "pipelines.cli.ops",
    "pipelines.cli.generate",
    "pipelines.cli.eval_retrieval",
    "pipelines.cli.eval_generator",
    "pipelines.cli.eval_factuality",
    "pipelines.cli.eval_attribution",
    "pipelines.cli.eval_source2synth",
    "pipelines.cli.train_generator",
    "pipelines.cli.serve",
    "pipelines.cli.train_retriever",
]


def user_errors() -> tuple[type[BaseException], ...]:
    """What a person can fix from the message alone: shown as one line, exit status 2, no
    traceback (``--verbose`` shows it). Anything else is a bug or a crash and keeps its traceback."""
    from actors.models import ModelNotFound
    from cluster.runtime import ClusterUnreachable
    from pipelines.cli.serve import PortInUse, ServeRunning
    from pipelines.core.config import ConfigError
    from pipelines.core.run import DiskFull, RunDirError
    from training.retriever import DataError

    return ConfigError, RunDirError, DiskFull, ModelNotFound, ClusterUnreachable, PortInUse, ServeRunning, DataError, FileNotFoundError


def main(argv: list[str] | None = None) -> None:
    """The ``synthrag`` entry point: the commands, with one clear line for what a person got wrong."""
    from pipelines.cli.run import RunInterrupted

    args = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    loud = bool({"--verbose", "-v"} & set(args)) or verbose()
    if not loud:
        quiet_terminal()
    for name in COMMAND_MODULES:
        importlib.import_module(name)
    try:
        app(args=args, prog_name="synthrag")
    except RunInterrupted as e:
        print(f"synthrag: {e}", file=sys.stderr)
        sys.exit(130)
    except user_errors() as e:
        if loud:
            raise
        message = str(e).strip() or type(e).__name__
        print(f"synthrag: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
