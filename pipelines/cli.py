"""The ``synthrag`` command line. Each area keeps its commands in its own module."""

from __future__ import annotations

import importlib
import os

from pipelines.cli_app import app

# Command modules register themselves on the apps in cli_app when imported.
COMMAND_MODULES = [
    "pipelines.cli_data",
    "pipelines.cli_ops",
    "pipelines.cli_generate",
    "pipelines.cli_eval_retrieval",
    "pipelines.cli_eval_generator",
    "pipelines.cli_train_generator",
    "pipelines.cli_serve",
    "pipelines.cli_train_retriever",
]


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in COMMAND_MODULES:
        importlib.import_module(name)
    app()


if __name__ == "__main__":
    main()
