"""The methods synthrag runs, by name, and the run config they share.

A method is a package under ``pipelines/`` (its pipeline in ``__init__.py``, its settings in
``config.py``) plus one line in :data:`METHODS`. ``synthrag run NAME`` is built from this table,
and the run config gets one section per method (``ragsynth:``, ``querygen:``, ...) beside the
sections every method shares (``ingest``, ``llm``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field, create_model

from actors.llm import LLMConfig
from pipelines.core.config import read_config
from pipelines.prismrag import prismrag
from pipelines.prismrag.config import PrismragConfig
from pipelines.querygen import querygen
from pipelines.querygen.config import QuerygenConfig
from pipelines.ragsynth import ragsynth
from pipelines.ragsynth.config import RagsynthConfig
from pipelines.scarlet import scarlet
from pipelines.scarlet.config import ScarletConfig
from pipelines.source2synth import source2synth
from pipelines.source2synth.config import Source2SynthConfig
from pipelines.stages.ingest import IngestConfig


@dataclass(frozen=True)
class Method:
    name: str
    run: Callable  # run(run: Run, cfg: RunConfig, *, limit: int | None) -> None, after ingest
    config: type[BaseModel]  # the method's section of the run config
    summary: str  # one line for `synthrag run --help`
    limit_help: str = "Cap the chunks sent to the LLM."
    options: dict[str, str] = field(default_factory=dict)  # method flags: "--seeds" -> "scarlet.seeds_file"


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("ragsynth", ragsynth, RagsynthConfig,
           "RAGSynth: single- and multi-hop QA citing source sentences, rewrites, completeness variants, exports."),
    Method("prismrag", prismrag, PrismragConfig,
           "PrismRAG: seed QA, distractor passages with a critique loop, strategized reasoning with a regeneration budget, SFT records.",
           "Cap the golden references (chunks; with prismrag.seed_qa.chunks_per_reference > 1, documents)."),
    Method("querygen", querygen, QuerygenConfig,
           "Query distillation: six query types per passage, retriever + teacher filtering, scored lists.",
           "Sample up to N passages after ingest and dedupe."),
    Method("scarlet", scarlet, ScarletConfig,
           "SCARLet: multi-task data on shared entity-related contexts, passage utilities by perturbation, "
           "utility-labelled retrieval lists.",
           "Cap the seeds: corpus passages (or lines of --seeds).",
           {"--seeds": "scarlet.seeds_file", "--tasks": "scarlet.tasks_file", "--kg": "scarlet.kg.kind",
            "--sparql-url": "scarlet.kg.sparql_url", "--target": "scarlet.target", "--split": "scarlet.split"}),
    Method("source2synth", source2synth, Source2SynthConfig,
           "Source2Synth: seeded 2-hop QA from documents, table QA with executed SQL, curated by a model tuned on half.",
           "Cap the doc-A chunks seeded and the tables seeded (each).",
           {"--tables": "source2synth.tables", "--curate": "source2synth.curation.enabled"}),
]}


class BaseRunConfig(BaseModel):
    """The sections every method shares; :data:`RunConfig` adds one section per method."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    prompts_dir: str | None = None  # a folder of prompt files overriding the packaged ones

    def prompt_search(self) -> list[str] | None:
        return [self.prompts_dir] if self.prompts_dir else None


RunConfig = create_model("RunConfig", __base__=BaseRunConfig,
                         **{m.name: (m.config, Field(default_factory=m.config)) for m in METHODS.values()})


def check_models(cfg: BaseModel, where: str = "") -> None:
    """Every local model path the config names is a model (:func:`actors.models.resolve_model`),
    checked here at the edge so a wrong path is one line before Ray starts, not an actor's
    traceback minutes later. Served model names (``llm.engine: openai``) are the server's."""
    from actors.embedder import EmbedderSettings
    from actors.models import EMBEDDED, ModelNotFound, resolve_model
    from actors.teacher import TeacherConfig

    def check(value: str, kind: str, key: str) -> None:
        if value != EMBEDDED:
            try:
                resolve_model(value, kind)
            except ModelNotFound as e:
                raise ModelNotFound(f"{key}: {e}") from None

    for name, value in cfg:
        key = f"{where}{name}"
        if isinstance(value, LLMConfig):
            if value.engine in ("transformers", "vllm"):
                check(value.model, "llm", f"{key}.model")
        elif isinstance(value, (EmbedderSettings, TeacherConfig)):
            check(value.model, "embedder" if isinstance(value, EmbedderSettings) else "teacher", f"{key}.model")
        elif isinstance(value, IngestConfig):
            check(value.tokenizer, "embedder", f"{key}.tokenizer")
        if isinstance(value, BaseModel):
            check_models(value, f"{key}.")
        elif name == "base" and isinstance(value, str):  # a method's fine-tuning base (an LLM)
            check(value, "llm", key)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> BaseRunConfig:
    """The run config from a YAML file and ``--set`` overrides (unknown keys are errors)."""
    cfg = read_config(RunConfig, path, overrides)
    if cfg.llm.seed == 0 and cfg.seed:
        cfg.llm.seed = cfg.seed
    return cfg
