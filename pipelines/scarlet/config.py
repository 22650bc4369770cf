"""SCARLet's settings: ``scarlet:`` in the run config. Defaults are the paper's (cited)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from actors.embedder import EmbedderSettings
from pipelines.scarlet.split import SplitName
from pipelines.stages.index import IndexConfig


class KGConfig(BaseModel):
    """Where one-hop neighbours of seed entities come from (§3.3, Appendix A)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["corpus", "sparql"] = "corpus"  # the corpus's co-mention graph, or a SPARQL endpoint
    sparql_url: str | None = None
    direct_claims: bool = False  # real Wikidata: go through wikibase:directClaim (see kg.py)
    timeout_s: float = Field(10.0, gt=0)
    neighbours: int = Field(5, ge=0)  # per seed entity (the paper's SPARQL LIMIT is unstated)
    max_degree: int | None = None  # corpus graph: entities in more chunks than this are hubs, skipped
    require_known_entity: bool = True  # a seed none of whose entities the graph knows is a reject


class ScarletConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks_file: str | None = None  # extra tasks (prompts/scarlet/tasks.yaml format)
    tasks: list[str] | None = None  # the tasks to synthesise (default: the whole pool; Eq. 3)
    seeds_file: str | None = None  # jsonl {task, input, answer}; default: seeds from the corpus
    # corpus seeds: each passage gives one seed of each of these tasks (default: one task per
    # passage, taken in turn from the pool, so seeds cover every task at 1/l of the cost)
    seed_tasks: list[str] | Literal["rotate", "all"] = "rotate"
    # a seed spaCy finds no entity in: a reject (the paper's App. A), or kept with its input as
    # the one retrieval query (scientific and technical text often has no named entities)
    no_entity: Literal["reject", "use_input"] = "reject"
    kg: KGConfig = KGConfig()
    max_entities: int = Field(10, ge=1)  # seed entities + neighbours used for retrieval
    per_entity: int = Field(10, ge=1)  # top passages per entity (§4.1)
    context_size: int = Field(10, ge=2)  # the shared context: top passages across all entities (§4.1)
    noise_passages: int = Field(1, ge=0)  # synthetic relevant-but-useless passages (Appendix A)
    max_passage_words: int = Field(120, ge=8)  # each passage cut to this (and to fit the window)
    masks: int = Field(64, ge=4)  # perturbation vectors per example (Appendix C: n = 64)
    keep_probability: float = Field(0.5, gt=0, lt=1)  # Appendix C
    ridge_lambda: float = Field(1.0, ge=0)  # λ of Eq. 4 (unstated in the paper)
    target: Literal["logit", "logprob"] = "logit"  # z of Eq. 5: raw logits (the paper's) or log-probs
    split: SplitName = "clusters"  # 1-D 3-means (§3.5) or the top1-bottom5 ablation (§4.4)
    query_with_instruction: bool = True  # the retriever's query = retrieval instruction ⊕ input (§3.1)
    embedder: EmbedderSettings = EmbedderSettings()
    index: IndexConfig = IndexConfig()
    embed_actors: tuple[int, int] = (1, 2)
