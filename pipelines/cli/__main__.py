"""``python -m pipelines.cli ...`` is the ``synthrag`` command."""

from pipelines.cli import main

main()
