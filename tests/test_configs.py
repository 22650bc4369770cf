"""Every example config under configs/ validates against the run config."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.registry import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_validates(path: Path):
    cfg = load_config(path)
    assert cfg.model_dump()  # round-trips


def test_querygen_config_runs_the_method_end_to_end():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "querygen.yaml",
                      ["querygen.evaluate.beir=/data/heldout", "querygen.train.epochs=1"])
    assert cfg.querygen.train.enabled and cfg.querygen.train.loss == "combined" and cfg.querygen.train.epochs == 1
    assert str(cfg.querygen.evaluate.beir) == "/data/heldout"
    with pytest.raises(ValueError, match="lossx"):
        load_config(None, ["querygen.train.lossx=1"])
