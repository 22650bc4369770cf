"""The retriever-training settings, kept free of torch so run configs can embed them cheaply."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

LossName = Literal["contrastive", "listwise", "combined", "pairwise"]
FnScope = Literal["contrastive", "all"]
PresetName = Literal["tamber"]

# Published training recipes, applied by ``preset``; any setting given alongside wins.
PRESETS: dict[str, dict] = {
    # Tamber et al. §3.3.2-3.3.4: listwise KL (tau_s 0.05, tau_t 0.3) + 0.1 x positive-aware
    # InfoNCE (tau 0.01) over K = 19 hard negatives, false negatives above 60% of the positive
    # out of the contrastive term only; lr 2e-4, 4,096 queries per batch through GradCache,
    # 90/10 train/dev split, up to 30 epochs, best dev loss kept, stop after 2 epochs without
    # improvement
    "tamber": {"loss": "combined", "lr": 2e-4, "batch_size": 4096, "epochs": 30,
               "dev_fraction": 0.1, "patience": 2, "min_delta": 0.0, "negatives": 19,
               "fn_fraction": 0.6, "fn_scope": "contrastive", "tau": 0.01, "tau_student": 0.05,
               "tau_teacher": 0.3, "listwise_weight": 1.0, "contrastive_weight": 0.1},
}


class RetrieverSettings(BaseModel):
    """How to train a retriever: everything but the data and the output directory. Pipelines
    embed it in their config (``querygen.train``); the CLI fills it from flags.

    ``preset`` (``tamber``) fills every setting of :data:`PRESETS` that is not given explicitly;
    the resolved values are what the model holds (and what ``metrics.json`` records)."""

    model_config = ConfigDict(extra="forbid")

    preset: PresetName | None = None
    base: str = "embedded"
    loss: LossName = "combined"
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1, description="queries per optimizer step, all workers")
    chunk_size: int = Field(32, ge=1, description="texts per GradCache forward/backward")
    loss_chunk_size: int | None = Field(None, ge=1, description="query rows per loss block")
    workers: int = Field(1, ge=1)
    cpus_per_worker: int = Field(1, ge=1)
    use_gpu: bool | None = None  # None: use GPUs when the cluster has them
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    max_steps: int | None = Field(None, ge=1)
    negatives: int = Field(19, ge=0, description="K hard negatives per query")
    fn_fraction: float | None = Field(0.6, ge=0, description="teacher false-negative threshold")
    fn_scope: FnScope = Field(
        "contrastive", description="where false negatives are left out: 'contrastive' (Tamber "
        "et al. 3.3.3: no negatives for the contrastive/pairwise terms, kept with their teacher "
        "scores in the listwise KL) or 'all' (dropped from the lists, every loss)")
    tau: float = Field(0.01, gt=0)
    tau_student: float = Field(0.05, gt=0)
    tau_teacher: float = Field(0.3, gt=0)
    listwise_weight: float = Field(1.0, ge=0)
    contrastive_weight: float = Field(0.1, ge=0)
    pairwise_tau: float = Field(0.05, gt=0)
    dev_fraction: float = Field(0.1, gt=0, lt=1)
    patience: int = Field(2, ge=1)
    min_delta: float = Field(0.0, ge=0, description="dev-loss decrease that counts as improvement")
    max_length: int | None = Field(None, ge=8)
    query_prefix: str = ""
    passage_prefix: str = ""
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        if isinstance(data, dict) and data.get("preset") in PRESETS:
            return {**PRESETS[data["preset"]], **data}  # explicit settings win
        return data

    @model_validator(mode="after")
    def _check(self):
        if self.batch_size < self.workers:
            raise ValueError(f"batch_size {self.batch_size} < workers {self.workers}")
        return self

    def loss_kwargs(self) -> dict:
        return dict(tau=self.tau, tau_student=self.tau_student, tau_teacher=self.tau_teacher,
                    listwise_weight=self.listwise_weight,
                    contrastive_weight=self.contrastive_weight, pairwise_tau=self.pairwise_tau)


class RetrieverTrainConfig(RetrieverSettings):
    """Everything a retriever training run needs; validated once at the edge (CLI).

    ``data`` is one source or several (run directories of any method, list files); several are
    mixed, each scaled by its ``data_weights`` entry: weight 2 repeats a source's lists twice,
    0.5 keeps a seeded half of them, 1 (the default) keeps them as they are."""

    data: list[Path] = Field(min_length=1)
    data_weights: list[float] | None = None
    out: Path

    @field_validator("data", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return list(v) if isinstance(v, (list, tuple)) else [v]

    @model_validator(mode="after")
    def _check_weights(self):
        w = self.data_weights
        if w is not None:
            if len(w) != len(self.data):
                raise ValueError(f"data_weights has {len(w)} values for {len(self.data)} data "
                                 f"sources (one --weight per --data)")
            if any(not x > 0 for x in w):
                raise ValueError(f"data_weights must be > 0, got {w}")
        return self
