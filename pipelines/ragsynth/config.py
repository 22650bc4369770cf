"""RAGSynth's settings: ``ragsynth:`` in the run config (every switch of the method, with its default)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from actors.embedder import EmbedderSettings
from pipelines.stages.index import IndexConfig
from pipelines.stages.mining import MiningConfig

Judge = Literal["likelihood", "yes-no"]
REWRITE_KINDS = ("synonyms", "irrelevant_condition", "ambiguity", "perspective", "detail")


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MultihopConfig(_Part):
    """Multi-hop through the entity graph (RAGSynth section 3.2)."""

    enabled: bool = True
    # model: the LLM writes the question and the answer from the clues, citing them (ragsynth/multihop);
    # an answer whose citations do not verify falls back to the facts answer (answer_source "facts").
    # facts: the LLM writes only the question, the answer is the bridge's facts verbatim
    answer: Literal["facts", "model"] = "model"
    hops: list[int] = Field(default_factory=lambda: [2, 3])  # clues (= documents) per question, in turn
    max_questions: int = Field(50, ge=0)  # bridges sent to the LLM
    max_per_clue: int = Field(2, ge=1)  # a clue is in at most this many bridges
    max_entity_degree: int = Field(50, ge=2)  # entities on more clues are too generic to bridge on
    ner_labels: list[str] = Field(default_factory=lambda: ["PERSON", "ORG", "GPE", "LOC", "FAC", "PRODUCT",
                                                          "EVENT", "WORK_OF_ART", "LAW", "NORP"])
    llm_entities: bool = True  # LLM entity + relation extraction from clues, beside spaCy NER
    sentence_clues: bool = True  # sentences naming an entity are clues too (verbatim facts)
    relations: bool = True  # LLM relations between the bridged entities are clues of the bridge too
    max_relations: int = Field(3, ge=0)  # relation clues per bridge (prompt size)
    similarity: float = Field(0.92, gt=0, le=1)  # name-embedding cosine that proposes a merge
    confirm_with_llm: bool = False  # a yes/no judge confirms each similarity merge
    single_doc_check: bool = True  # reject questions one document answers alone
    # question-likelihood: reject if one document makes the question as likely as all of them do
    # (within single_doc_margin nats/token); answer-likelihood: the same for the reference answer
    # (vacuous for facts-mode answers, which quote every document); yes-no: ask the model
    single_doc_judge: Literal["question-likelihood", "answer-likelihood", "yes-no"] = "question-likelihood"
    single_doc_margin: float = 0.0
    judge_threshold: float = Field(0.5, gt=0, lt=1)  # yes-no: P(yes) that counts as yes

    @field_validator("hops")
    @classmethod
    def _hops(cls, v):
        if not v or any(not 2 <= h <= 4 for h in v):
            raise ValueError("multihop.hops: clues per question must each be 2, 3 or 4")
        return v


class RewriteConfig(_Part):
    """Logical-complexity rewrites: equivalence transformations, a judge keeps the true ones."""

    enabled: bool = True
    kinds: list[str] = Field(default_factory=lambda: list(REWRITE_KINDS))  # prompts ragsynth/rewrite_<kind>
    per_question: int = Field(2, ge=0)  # kinds drawn per question (seeded)
    max_questions: int | None = Field(None, ge=0)  # questions rewritten (None: all)
    judge: Judge = "likelihood"
    margin: float = Field(0.5, ge=0)  # likelihood: the answer may be this much less likely (nats/token)
    judge_threshold: float = Field(0.5, gt=0, lt=1)

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, v):
        unknown = set(v) - set(REWRITE_KINDS)
        if unknown:
            raise ValueError(f"rewrites.kinds: unknown {sorted(unknown)}; known: {list(REWRITE_KINDS)}")
        return v


class VariantConfig(_Part):
    """Clue completeness: answers from every non-empty proper subset of a query's documents."""

    enabled: bool = True
    max_per_question: int = Field(6, ge=0)  # partial-answer variants per query (2^p - 2 before the cap)
    partial_questions: bool = True  # an LLM question for what each subset answers (retrieval queries)
    # model: the LLM answers from the clues that remain and says what is missing (one call per
    # variant, ragsynth/partial_answer); a reply that fails its checks, or template, gives the
    # available facts verbatim followed by missing_text (answer_source "template")
    answer: Literal["model", "template"] = "model"
    missing_text: str = ("The provided documents do not contain the rest of the information the question "
                         "asks for ({n} more document(s) would be needed), so that part cannot be answered.")
    refusal: bool = True  # the empty set's refusal for every query
    refusal_text: str = ("The provided documents do not contain the information needed to answer "
                         "this question, so I cannot answer it.")


class ExportConfig(_Part):
    """Retriever training lists (ANCE-style mined negatives) and generator SFT records."""

    lists: bool = True
    negatives: int = Field(19, ge=1)
    mining: MiningConfig = MiningConfig(rank_start=0, rank_end=40)
    embedder: EmbedderSettings = EmbedderSettings()
    index: IndexConfig = IndexConfig()
    sft: bool = True
    sft_distractors: int = Field(1, ge=0)  # retrieved-but-irrelevant chunks added to each context


class RagsynthConfig(_Part):
    """RAGSynth: single-hop, multi-hop, rewrites, completeness variants, criteria, exports."""

    single_hop: bool = True
    # where clues come from. model: the LLM states facts, citing the sentences each comes from
    # (ragsynth/clues); sentences: a chunk's sentences that stand alone are its clues verbatim
    # (§3: single-hop clues are sentences; no LLM call). auto: sentences for a small model
    # (llm.prompt_variant), model otherwise
    clues: Literal["auto", "model", "sentences"] = "auto"
    clue_min_words: int = Field(5, ge=1)  # sentences clues: content words a sentence needs
    # single-hop answers. model: the LLM writes question and answer sentences citing the clues
    # (ragsynth/qa); facts: the LLM writes the question a chunk's first clue answers, and that
    # clue, verbatim, is the answer (ragsynth/qa_question). auto: facts for a small model
    single_hop_answer: Literal["auto", "model", "facts"] = "auto"
    max_clues: int = Field(4, ge=1)
    min_support: float = Field(0.5, ge=0.0, le=1.0)  # answer content words found in cited sentences
    max_sentences_per_chunk: int = Field(12, ge=1)  # prompt size bound for small models
    multihop: MultihopConfig = MultihopConfig()
    rewrites: RewriteConfig = RewriteConfig()
    variants: VariantConfig = VariantConfig()
    export: ExportConfig = ExportConfig()

    def resolved(self, small: bool) -> "RagsynthConfig":
        """These settings with every ``auto`` decided for the model in use (``small``: the LLM
        runs the small prompt variant)."""
        return self.model_copy(update={
            "clues": ("sentences" if small else "model") if self.clues == "auto" else self.clues,
            "single_hop_answer": ("facts" if small else "model") if self.single_hop_answer == "auto"
            else self.single_hop_answer})
