"""PrismRAG's settings: ``prismrag:`` in the run config. Defaults are the paper's (Kachuee et
al., 2025, "PrismRAG"); each constant names the section it comes from.

Sampling (temperature, top-p, max tokens) is a property of each prompt file under
``prompts/prismrag/`` (the stochastic thought generation ships with the paper's temperature 1.0 and
top-p 0.9, §4.3 step 4); point ``prompts_dir`` at a folder with edited copies to change it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class UserContext(BaseModel):
    """Optional user context passed into every prompt (§4.2 step 1 and Appendix 13.7/13.8: the
    question's user-time and location). Empty fields are left out of the prompts."""

    model_config = ConfigDict(extra="forbid")
    time: str | None = None  # e.g. "4pm, Thursday, January 9, 2025"
    location: str | None = None  # e.g. "Seattle, WA"


class SeedConfig(BaseModel):
    """§4.1 seed QA: one question-answer pair per golden reference."""

    model_config = ConfigDict(extra="forbid")
    # a golden reference is one chunk, or this many consecutive chunks of one document (§4.1:
    # "we split documents into references, and then randomly select a golden reference")
    chunks_per_reference: int = Field(1, ge=1)
    # a reference longer than this is cut to its leading whole sentences that fit (a first
    # sentence longer than the limit is cut at the word limit); the cut is recorded in the
    # example's meta (``truncated``). Not in the paper (a 70B model's window); keeps the two
    # references of a distractor instance inside ``llm.max_input_tokens`` of the embedded model.
    max_reference_words: int = Field(300, ge=20)


class DistractorConfig(BaseModel):
    """§4.2: distractor generation with a critique loop."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    max_attempts: int = Field(5, ge=1)  # §4.2 step 3: "reaches five iterations"
    pass_score: int = Field(4, ge=1, le=5)  # §4.2 step 3: "until each sample scores 4 or higher"
    # who writes the distractor: the LLM (§4.2 step 1), or code that swaps the golden passage's
    # named entities, dates and numbers for others of the same label from the corpus
    # (pipelines/prismrag/rules.py); auto: substitute for the small (embedded) model, whose
    # LLM-written distractors were not passages (RESULTS.md, issue 17)
    writer: Literal["auto", "llm", "substitute"] = "auto"
    # who scores it: the LLM critic (§4.2 step 2) or rules (word overlap, facts changed, length
    # ratio); auto: rule for the small model, whose critic scored every attempt 1/1/1
    critic: Literal["auto", "llm", "rule"] = "auto"
    max_key_facts: int = Field(5, ge=1)  # substitute: facts changed per distractor
    pool_chunks: int = Field(2000, ge=1)  # substitute: chunks (seeded sample) whose entities form the pool
    pool_per_label: int = Field(200, ge=1)  # substitute: distinct entities kept per label


class StrategizeConfig(BaseModel):
    """§4.3: strategy → reasoning → answer, two evaluators and a regeneration budget."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    budget: int = Field(10, ge=1)  # §4.3 step 5: "exhaust a budget of 10 attempts"
    stochastic_attempts: int = Field(6, ge=0)  # §4.3 step 5: "stochastic ... for the first 6 attempts"
    pass_score: int = Field(4, ge=1, le=4)  # §4.3 steps 2-3: score 4 of 1-4 on both evaluators
    # §4.3 step 3: "For thoughts assessed as high-quality, we compare the candidate and the
    # ground-truth answers": the answer evaluator runs only on attempts whose thought passed.
    # True runs it on every attempt (more signal for the report, more LLM calls).
    answer_eval_all: bool = False
    # who evaluates thoughts and answers: the LLM (§4.3 steps 2-3) or rules (the reasoning's
    # words found in the references; the reference answer's words in the candidate); auto: rule
    # for the small model, whose thought evaluator scored every attempt 1
    evaluator: Literal["auto", "llm", "rule"] = "auto"


class ExportConfig(BaseModel):
    """SFT export (§5.1.3: loss over the whole assistant response, not the prompt)."""

    model_config = ConfigDict(extra="forbid")
    # share of distractor-resilience records among the exported records (Table 1: 2,589 of
    # 10,342 ≈ 0.25); the more plentiful task is subsampled (seeded) to reach it. None: keep all.
    distractor_share: float | None = Field(None, ge=0.0, le=1.0)
    system: str | None = None  # an optional system turn for every record


class PrismragConfig(BaseModel):
    """PrismRAG settings (``prismrag:`` in the run config)."""

    model_config = ConfigDict(extra="forbid")
    user_context: UserContext = UserContext()
    seed_qa: SeedConfig = SeedConfig()
    distractor: DistractorConfig = DistractorConfig()
    strategize: StrategizeConfig = StrategizeConfig()
    export: ExportConfig = ExportConfig()

    def resolved(self, small: bool) -> "PrismragConfig":
        """These settings with every ``auto`` decided for the model in use (``small``: the LLM
        runs the small prompt variant)."""
        d, s = self.distractor, self.strategize
        pick = {"writer": ("substitute", "llm"), "critic": ("rule", "llm"), "evaluator": ("rule", "llm")}

        def choose(obj, field):
            v = getattr(obj, field)
            return pick[field][0 if small else 1] if v == "auto" else v

        return self.model_copy(update={
            "distractor": d.model_copy(update={"writer": choose(d, "writer"), "critic": choose(d, "critic")}),
            "strategize": s.model_copy(update={"evaluator": choose(s, "evaluator")})})

    @model_validator(mode="after")
    def _check(self):
        if self.strategize.stochastic_attempts > self.strategize.budget:
            raise ValueError("prismrag.strategize.stochastic_attempts cannot exceed strategize.budget")
        return self
