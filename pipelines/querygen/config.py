"""Query distillation's settings: ``querygen:`` in the run config."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

import prompts
from actors.embedder import EmbedderSettings
from actors.teacher import TeacherConfig
from pipelines.stages.index import IndexConfig
from training.retriever_config import RetrieverSettings

QUERY_TYPES = ["web_search", "question", "claim", "title", "keywords", "user_style"]
DEFAULT_EXAMPLES = Path(prompts.__file__).resolve().parent / "querygen" / "examples.yaml"


class QuerygenTrainConfig(RetrieverSettings):
    """``querygen.train``: fine-tune a retriever on the run's lists (any `train retriever` field)."""

    enabled: bool = False


class QuerygenEvalConfig(BaseModel):
    """``querygen.evaluate``: score the base and the trained retriever on held-out queries."""

    model_config = ConfigDict(extra="forbid")
    beir: Path | None = None  # a BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv
    split: str = "test"


class QuerygenConfig(BaseModel):
    """Query distillation settings (``querygen:`` in the run config)."""

    model_config = ConfigDict(extra="forbid")
    query_types: list[str] = Field(default_factory=lambda: list(QUERY_TYPES))
    # few-shot passage-query pairs, 1 to 3 for each type; default prompts/querygen/examples.yaml (all six types)
    examples_file: str | None = None
    # your users' queries (or {passage, query} pairs): when given they replace the file's `user_style` examples
    user_examples: list[str | dict[str, str]] = Field(default_factory=list)
    max_query_words: int = Field(20, ge=1)  # queries must be shorter than this
    top_k: int = Field(20, ge=2)  # filter rule 1 depth, and the number of candidates per list
    false_negative_fraction: float = Field(0.6, gt=0, le=1)
    percentiles: tuple[float, float] = (1.0, 99.0)
    sample_seed: int = 0
    embedder: EmbedderSettings = EmbedderSettings()
    index: IndexConfig = IndexConfig()
    teacher: TeacherConfig = TeacherConfig(judge="query-likelihood")
    embed_actors: tuple[int, int] = (1, 2)
    train: QuerygenTrainConfig = QuerygenTrainConfig()
    evaluate: QuerygenEvalConfig = QuerygenEvalConfig()
