"""The run config: one YAML file, validated at the edge, flowing to every stage.

Unknown keys are errors (a typo should not silently fall back to a default). ``--set a.b=c`` on the
command line overrides any field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from actors.llm import LLMConfig
from pipelines.ingest import IngestConfig
from pipelines.querygen import QuerygenConfig


class RagsynthConfig(BaseModel):
    """RAGSynth (single-hop part): clues per chunk → question + answer citing clues → checks."""

    model_config = ConfigDict(extra="forbid")
    max_clues: int = Field(4, ge=1)
    min_support: float = Field(0.5, ge=0.0, le=1.0)  # answer content words found in cited sentences
    max_sentences_per_chunk: int = Field(12, ge=1)  # prompt size bound for small models


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    ingest: IngestConfig = IngestConfig()
    llm: LLMConfig = LLMConfig()
    ragsynth: RagsynthConfig = RagsynthConfig()
    querygen: QuerygenConfig = QuerygenConfig()
    prompts_dir: str | None = None  # a folder of prompt files overriding the packaged ones

    def prompt_search(self) -> list[str] | None:
        return [self.prompts_dir] if self.prompts_dir else None


def _set_path(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    data: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} not found")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {p} must hold a mapping at the top level")
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        _set_path(data, key.strip(), yaml.safe_load(raw))
    cfg = RunConfig.model_validate(data)
    if cfg.llm.seed == 0 and cfg.seed:
        cfg.llm.seed = cfg.seed
    return cfg
