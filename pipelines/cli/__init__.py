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


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not ({"--verbose", "-v"} & set(sys.argv[1:]) or verbose()):
        quiet_terminal()
    for name in COMMAND_MODULES:
        importlib.import_module(name)
    app()


if __name__ == "__main__":
    main()
