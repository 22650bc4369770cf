"""Source2Synth's settings: ``source2synth:`` in the run config (every switch, with its default).

Paper constants (Lupidi et al. 2024, arXiv 2409.08239) and where they come from:

- ``curation.slice_fraction`` 0.5: "we split the dataset in two slices of equal size" (§2.2,
  Dataset Curation).
- ``curation.tries`` k = 3: an example is kept when LLMSynth predicts its answer in k tries
  (§2.2, Data filtering; k = 3 in the experiments).
- two hops for multi-hop QA (§3.1; the paper's limitations section: "restricted to two").
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MultihopConfig(_Part):
    """Multi-hop QA from documents (paper §3.1): seed entity → Q1 (doc A) + Q2 (doc B) → merged."""

    enabled: bool = True
    ner_labels: list[str] = Field(default_factory=lambda: ["PERSON", "ORG", "GPE", "LOC", "FAC", "PRODUCT",
                                                          "EVENT", "WORK_OF_ART", "NORP"])
    max_seeds: int = Field(50, ge=0)  # doc-A chunks (one seed entity each) sent to the LLM; --limit caps too
    max_index_chunks: int | None = Field(None, ge=1)  # chunks NER reads for the entity index (None: all)
    max_passage_chars: int = Field(1200, ge=100)  # passages are cut to this in prompts (small models)
    min_entity_chars: int = Field(3, ge=1)  # shorter names are too ambiguous to bridge on


class TableQAConfig(_Part):
    """Table QA with executed SQL (paper §3.2): seed fact → SQL → executed answer → question."""

    enabled: bool = True
    max_tables: int | None = Field(50, ge=0)  # tables seeded (one fact each per seed); --limit caps too
    seeds_per_table: int = Field(1, ge=1)  # facts asked per table (different sampling seeds)
    describe_rows: int = Field(5, ge=0)  # sample rows shown to the LLM
    timeout_s: float = Field(2.0, gt=0)  # sandbox wall clock per query
    max_rows: int = Field(50, ge=1)  # results with more rows are rejects (too_many_rows)
    max_answer_values: int = Field(5, ge=1)  # an answer lists at most this many cells
    require_seed_value: bool = True  # the executed result must contain the seed fact's value
    join_groups: bool = False  # beyond the paper: not implemented yet (an error when set)

    @model_validator(mode="after")
    def _joins(self):
        if self.join_groups:
            raise ValueError("source2synth.tables_qa.join_groups: multi-table joins are not implemented yet")
        return self


class CurationConfig(_Part):
    """Curation (paper §2.2): fine-tune LLMSynth on slice 0, filter (and impute) slice 1 with it."""

    enabled: bool = True  # off: examples/ holds every generated example, uncurated
    slice_fraction: float = Field(0.5, gt=0, lt=1)  # share of each task's examples in slice 0
    tries: int = Field(3, ge=1)  # k: answers LLMSynth gets per slice-1 question
    retry_temperature: float = Field(0.7, gt=0)  # tries after the first sample at this temperature
    base: str = "embedded"  # the model LLMSynth is fine-tuned from (a local dir, or embedded)
    lora: bool = True
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(50, ge=1)  # cap on optimizer steps (tests: 1)
    batch_size: int = Field(4, ge=1)
    lr: float | None = Field(None, gt=0)  # None: the SFT default (2e-4 with LoRA)
    max_length: int = Field(1024, ge=64)
    workers: int = Field(1, ge=1)
    max_tokens: int = Field(96, ge=8)  # LLMSynth's answer budget per try
    numeric_tolerance: float = Field(0.01, ge=0)  # relative tolerance of the numeric soft match
    impute: Literal["missing", "always", "off"] = "missing"  # reasoning filled in by LLMSynth
    keep_slice0: bool = False  # paper: the curated set is the filtered slice 1 only


class Source2SynthConfig(_Part):
    """Source2Synth: multi-hop QA, table QA with executed SQL, curation by an intermediate model."""

    tables: Path | None = None  # --tables PATH: CSV/JSONL/Parquet/SQLite (pipelines/source2synth/tables.py)
    multihop: MultihopConfig = MultihopConfig()
    tables_qa: TableQAConfig = TableQAConfig()
    curation: CurationConfig = CurationConfig()
