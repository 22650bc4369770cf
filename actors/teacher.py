"""The relevance teacher: scores (query, passage) pairs, in-process or behind Ray Serve.

One interface, ``score(query, passages) -> list[float]`` (higher = more relevant, aligned with
``passages``), two backends chosen from the model path:

- **cross-encoder**: a sentence-transformers ``CrossEncoder`` loaded from a local directory whose
  ``config.json`` names a ``...ForSequenceClassification`` architecture (bge-reranker, ms-marco
  MiniLM, ...). Scores are the model's own activation (sigmoid for one-label rerankers).
- **llm-judge**: a pointwise LLM judge (``embedded`` or a local causal-LM directory). The prompt
  ``prompts/teacher/relevance.yaml`` asks whether the passage is relevant; its schema is an
  ``enum`` of the allowed replies, the first one meaning "relevant". The score is
  P(first reply) = softmax over the teacher-forced log-probabilities of the replies
  (:meth:`actors.llm.Engine.choice_logprobs`), a number in [0, 1]. With ``judge:
  query-likelihood`` the score is instead how likely the LLM finds the query as its reply to
  "write a search query for this passage" (UPR, Sachan et al. 2022): exp(mean token log-prob),
  also in [0, 1], and the default: on SmolLM2-135M it reorders SciFact's retrieved top-20 better
  than the retriever did, where the yes/no judge ranks them near randomly (benchmarks/RESULTS.md,
  teacher quality); the yes/no judge suits larger local models.

Serving (:class:`TeacherDeployment`): a Ray Serve deployment with dynamic batching over pairs
(``@serve.batch``; the pairs of concurrent requests share a model call), autoscaling
between ``min_replicas`` and ``max_replicas``, a GPU fraction per replica when the cluster has
GPUs, and an HTTP JSON API on the Serve port:

- ``POST /score`` ``{"query": str, "passages": [str]}`` -> ``{"scores": [float]}``;
  413 when a request has too many passages or a passage/query is too long, 401 when a bearer
  token is configured and the ``Authorization`` header does not carry it, 422 on malformed JSON.
- ``POST /rerank`` (text-embeddings-inference) ``{"query", "texts"}`` -> ``[{"index", "score"}]``
  and ``POST /v1/rerank`` (Cohere) ``{"query", "documents", "top_n"}`` -> ``{"results": [{"index",
  "relevance_score"}]}``, both best first: the rerank calls RAG frameworks already make, so one
  endpoint serves training and production reranking (same limits and token);
- ``GET /health`` -> ``{"status": "ok", "backend": ..., "model": ...}`` (no token needed).

Pipelines use a :class:`~ray.serve.handle.DeploymentHandle`, not HTTP::

    handle = start_teacher(TeacherConfig(model="embedded"))
    scores = score_pairs(handle, "who wrote hamlet", ["Hamlet is by Shakespeare.", "Coffee."])

and tests and benchmarks use the same scoring in-process with :class:`Teacher`.
"""

# No `from __future__ import annotations`: FastAPI must see the route annotations as types
# through serve.ingress.
import asyncio
import hmac
import json
import math
import os
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from actors.llm import LLMConfig

TOKEN_ENV = "SYNTHRAG_TEACHER_TOKEN"
Backend = Literal["cross-encoder", "llm-judge"]


class TeacherConfig(BaseModel):
    """How to run the teacher. Lives in the run config under ``teacher:``."""

    model_config = ConfigDict(extra="forbid")
    model: str = "embedded"  # "embedded" (LLM judge) or a local directory
    backend: Literal["auto", "cross-encoder", "llm-judge"] = "auto"
    # llm-judge scoring, see module doc; query likelihood agrees with human judgements, the 135M
    # yes/no judge does not (benchmarks/bench_teachers.py)
    judge: Literal["yes-no", "query-likelihood"] = "query-likelihood"
    prompt: str | None = None  # judge prompt name or .yaml path; None: the judge's packaged prompt
    llm: LLMConfig | None = None  # judge engine override (vllm/openai); default from ``model``
    max_length: int = Field(512, ge=8)  # cross-encoder: tokens per (query, passage) pair
    # request limits (HTTP and handle)
    max_passages: int = Field(64, ge=1)
    max_passage_chars: int = Field(4000, ge=1)
    max_query_chars: int = Field(1000, ge=1)
    # batching: pairs per model call, across concurrent requests
    max_batch_size: int = Field(16, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0.0)
    # replicas
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0)
    max_ongoing_requests: int = Field(64, ge=1)  # per replica; >= what batching needs
    num_cpus: float = Field(1.0, gt=0)  # per replica (also the torch threads on CPU)
    num_gpus: float | None = Field(None, ge=0)  # per replica; None: gpu_fraction if the cluster has GPUs
    gpu_fraction: float = Field(0.25, gt=0, le=1)
    # HTTP
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    app_name: str = "teacher"
    route_prefix: str = "/"
    token: SecretStr | None = None  # bearer token for HTTP; None: from $SYNTHRAG_TEACHER_TOKEN

    @model_validator(mode="after")
    def _check(self):
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"teacher.min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        if not self.route_prefix.startswith("/"):
            raise ValueError("teacher.route_prefix must start with '/'")
        if self.token is None and os.environ.get(TOKEN_ENV):
            self.token = SecretStr(os.environ[TOKEN_ENV])
        return self


# ----------------------------------------------------------------------------- backends
def detect_backend(model: str) -> Backend:
    """``embedded`` or a causal LM -> llm-judge; a sequence-classification model -> cross-encoder."""
    if model == "embedded":
        return "llm-judge"
    path = Path(model).expanduser()
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"teacher model {model!r} is not 'embedded' nor a local model directory "
                         f"with a config.json (synthrag never downloads weights)")
    archs = json.loads(cfg_file.read_text()).get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "cross-encoder"
    st_cfg = path / "config_sentence_transformers.json"
    if st_cfg.is_file() and json.loads(st_cfg.read_text()).get("model_type") == "CrossEncoder":
        return "cross-encoder"
    if any(a.endswith("ForCausalLM") for a in archs):
        return "llm-judge"
    raise ValueError(f"cannot tell the teacher backend of {model!r} (architectures {archs}); "
                     f"set teacher.backend to 'cross-encoder' or 'llm-judge'")


def _use_gpu(cfg: TeacherConfig) -> bool:
    import torch

    return torch.cuda.is_available() and (cfg.num_gpus is None or cfg.num_gpus > 0)


class CrossEncoderBackend:
    """sentence-transformers CrossEncoder from a local directory."""

    def __init__(self, cfg: TeacherConfig):
        import torch
        from sentence_transformers import CrossEncoder

        device = "cuda" if _use_gpu(cfg) else "cpu"
        if device == "cpu":
            torch.set_num_threads(max(1, int(cfg.num_cpus)))
        self.model = CrossEncoder(str(Path(cfg.model).expanduser()), device=device,
                                  max_length=cfg.max_length, local_files_only=True)
        self.name = str(cfg.model)
        self.batch_size = cfg.max_batch_size

    def score_batch(self, pairs: list[tuple[str, str]]) -> list[float]:
        scores = self.model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False)
        if getattr(scores, "ndim", 1) != 1:
            raise ValueError(f"cross-encoder {self.name} returns {scores.shape[-1]} labels per pair; "
                             f"the teacher needs a one-label relevance model")
        return [float(s) for s in scores]


class LLMJudgeBackend:
    """Pointwise LLM judge: P(relevant reply) from teacher-forced log-probs of the replies."""

    default_prompt = "teacher/relevance"

    def __init__(self, cfg: TeacherConfig):
        import prompts
        from actors.llm import make_engine

        llm = cfg.llm
        if llm is None:
            llm = LLMConfig(engine="embedded" if cfg.model == "embedded" else "transformers",
                            model=cfg.model, num_cpus=cfg.num_cpus,
                            num_gpus=1.0 if _use_gpu(cfg) else 0.0)
        self.prompt = prompts.load(cfg.prompt or self.default_prompt)
        self.engine = make_engine(llm)
        self.name = f"{self.engine.name} judge ({self.prompt.id})"
        self._setup()

    def _setup(self) -> None:
        schema = self.prompt.schema or {}
        self.choices = list(schema.get("enum") or [])
        if len(self.choices) < 2:
            raise ValueError(f"judge prompt {self.prompt.id} needs schema.enum with >= 2 replies, "
                             f"the first meaning 'relevant'")
        self._fast_ids = single_token_choices(self.engine, self.choices)

    def score_batch(self, pairs: list[tuple[str, str]]) -> list[float]:
        msgs = [self.prompt.messages({"query": q, "passage": p}) for q, p in pairs]
        if self._fast_ids is not None:
            rows = next_token_logprobs(self.engine, msgs, self._fast_ids)
        else:
            rows = self.engine.choice_logprobs(msgs, self.choices)
        return [p_first(row) for row in rows]


class QueryLikelihoodBackend(LLMJudgeBackend):
    """UPR-style judge (Sachan et al., 2022): how likely the LLM finds the query as the reply to
    "write a search query for this passage". Score = exp(mean log p(query token | passage)), the
    per-token geometric-mean probability, in (0, 1]. Needs a local transformers engine."""

    default_prompt = "teacher/query_likelihood"

    def _setup(self) -> None:
        from actors.llm import TransformersEngine

        if not isinstance(self.engine, TransformersEngine):
            raise ValueError("teacher.judge 'query-likelihood' needs a local model (embedded or a "
                             "transformers directory), not a vllm/openai engine")

    def score_batch(self, pairs: list[tuple[str, str]]) -> list[float]:
        msgs = [self.prompt.messages({"passage": p}) for _, p in pairs]
        rows = continuation_logprobs(self.engine, msgs, [q for q, _ in pairs])
        return [math.exp(sum(r) / len(r)) if r else 0.0 for r in rows]


def single_token_choices(engine, choices: list[str]) -> list[int] | None:
    """Token ids of ``choices`` when each is one token of a local transformers engine, else None."""
    from actors.llm import TransformersEngine

    if not isinstance(engine, TransformersEngine):
        return None
    ids = [engine.tok(c, add_special_tokens=False)["input_ids"] for c in choices]
    return [i[0] for i in ids] if all(len(i) == 1 for i in ids) else None


def next_token_logprobs(engine, messages: list[list[dict]], token_ids: list[int]) -> list[list[float]]:
    """Log-probs of one-token replies from one pass over the prompts.

    Equal to ``engine.choice_logprobs(messages, choices)`` for one-token choices (a test checks
    it), which runs one pass per message and choice: when every reply is a single token they all
    share the context, so the next-token distribution at the end of the prompt gives them all.
    The prompts' shared prefix (instructions, the query) is prefilled once
    (:meth:`actors.llm.TransformersEngine.tail_logprobs`).
    """
    seqs = [engine._prompt_ids(m, "") for m in messages]
    return [lp[-1, token_ids].tolist() for lp in engine.tail_logprobs(seqs, [1] * len(seqs))]


def continuation_logprobs(engine, messages: list[list[dict]], continuations: list[str]) -> list[list[float]]:
    """Per-token log-probs of ``continuations[i]`` as the start of the reply to ``messages[i]``
    (their sums equal ``engine.choice_logprobs([m], [c])``)."""
    torch = engine.torch
    ctxs = [engine._prompt_ids(m, "") for m in messages]
    conts = [engine.tok(c, add_special_tokens=False)["input_ids"] for c in continuations]
    # token j of a continuation of n tokens is predicted at position j of the last n + 1
    logp = engine.tail_logprobs([a + c for a, c in zip(ctxs, conts)], [len(c) + 1 for c in conts])
    return [lp[torch.arange(len(c)), c].tolist() if c else [] for lp, c in zip(logp, conts)]


def p_first(logprobs: list[float]) -> float:
    """Softmax over the replies' log-probs, probability of the first; 0.5 if none is finite."""
    top = max(logprobs)
    if top == -math.inf:
        return 0.5
    exps = [math.exp(lp - top) for lp in logprobs]
    return exps[0] / sum(exps)


# ----------------------------------------------------------------------------- in-process
class RequestTooLarge(ValueError):
    """A request over the teacher's limits (HTTP 413)."""


class Teacher:
    """The teacher in-process: what each Serve replica runs, also usable directly."""

    def __init__(self, cfg: TeacherConfig | None = None):
        self.cfg = cfg or TeacherConfig()
        self.backend: Backend = (detect_backend(self.cfg.model) if self.cfg.backend == "auto"
                                 else self.cfg.backend)
        impl = (CrossEncoderBackend if self.backend == "cross-encoder" else
                QueryLikelihoodBackend if self.cfg.judge == "query-likelihood" else LLMJudgeBackend)
        self.impl = impl(self.cfg)
        self.name = self.impl.name

    def check(self, query: str, passages: list[str]) -> None:
        """Raise :class:`RequestTooLarge` when a request is over the configured limits."""
        c = self.cfg
        if len(passages) > c.max_passages:
            raise RequestTooLarge(f"too many passages: {len(passages)} > max_passages {c.max_passages}")
        if len(query) > c.max_query_chars:
            raise RequestTooLarge(f"query too long: {len(query)} characters > max_query_chars {c.max_query_chars}")
        for i, p in enumerate(passages):
            if len(p) > c.max_passage_chars:
                raise RequestTooLarge(f"passage {i} too long: {len(p)} characters > "
                                      f"max_passage_chars {c.max_passage_chars}")

    def score_batch(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Scores of (query, passage) pairs, in model calls of at most ``max_batch_size``."""
        n = self.cfg.max_batch_size
        return [s for i in range(0, len(pairs), n) for s in self.impl.score_batch(pairs[i:i + n])]

    def score(self, query: str, passages: list[str]) -> list[float]:
        self.check(query, passages)
        return self.score_batch([(query, p) for p in passages])


# ----------------------------------------------------------------------------- Ray Serve
from fastapi import FastAPI, HTTPException, Request  # noqa: E402
from ray import serve  # noqa: E402

api = FastAPI(title="synthrag teacher", description="Relevance scores of (query, passage) pairs.")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str
    passages: list[str]


class ScoreResponse(BaseModel):
    scores: list[float]


class TEIRerankRequest(BaseModel):
    """text-embeddings-inference's ``POST /rerank`` body (``truncate*`` accepted, not applied:
    the limits answer 413 instead)."""

    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool = False
    truncation_direction: Literal["left", "right", "Left", "Right"] = "right"


class CohereDocument(BaseModel):
    text: str


class CohereRerankRequest(BaseModel):
    """Cohere's ``POST /v1/rerank`` body; documents as strings or ``{"text": ...}``."""

    query: str
    documents: list[str | CohereDocument]
    model: str | None = None
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = False
    max_chunks_per_doc: int | None = None


def ranked(scores: list[float]) -> list[int]:
    """Indices by score, best first (ties keep the request's order)."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])


@serve.deployment(name="TeacherDeployment")
@serve.ingress(api)
class TeacherDeployment:
    """One replica: a :class:`Teacher` behind batched scoring, HTTP routes and a handle method."""

    def __init__(self, cfg: TeacherConfig):
        self.teacher = Teacher(cfg)
        self.cfg = self.teacher.cfg
        self._token = cfg.token.get_secret_value() if cfg.token else None
        self._score_pairs.set_max_batch_size(cfg.max_batch_size)
        self._score_pairs.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.pairs_scored = 0
        self.batches = 0

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _score_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        # The model call runs off the event loop so the replica keeps accepting (and batching)
        # requests and answering /health while it computes.
        scores = await asyncio.to_thread(self.teacher.impl.score_batch, pairs)
        self.pairs_scored += len(pairs)
        self.batches += 1
        return scores

    async def score(self, query: str, passages: list[str]) -> list[float]:
        """Handle API: scores aligned with ``passages``; raises RequestTooLarge over limits."""
        self.teacher.check(query, passages)
        return list(await asyncio.gather(*(self._score_pairs((query, p)) for p in passages)))

    def _authorize(self, request: Request) -> None:
        if self._token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    async def _http_scores(self, query: str, texts: list[str], request: Request) -> list[float]:
        """Every HTTP route's scoring: the token checked, a request over the limits a 413."""
        self._authorize(request)
        try:
            return await self.score(query, texts)
        except RequestTooLarge as e:
            raise HTTPException(413, str(e)) from None

    @api.post("/score", response_model=ScoreResponse)
    async def http_score(self, body: ScoreRequest, request: Request) -> ScoreResponse:
        return ScoreResponse(scores=await self._http_scores(body.query, body.passages, request))

    @api.post("/rerank")
    async def tei_rerank(self, body: TEIRerankRequest, request: Request) -> list[dict]:
        """text-embeddings-inference's rerank API: ``[{index, score[, text]}]``, best first."""
        scores = await self._http_scores(body.query, body.texts, request)
        return [{"index": i, "score": scores[i], **({"text": body.texts[i]} if body.return_text else {})}
                for i in ranked(scores)]

    @api.post("/v1/rerank")
    async def cohere_rerank(self, body: CohereRerankRequest, request: Request) -> dict:
        """Cohere's rerank API: ``{id, results: [{index, relevance_score[, document]}], meta}``, best
        first, cut to ``top_n``."""
        texts = [d if isinstance(d, str) else d.text for d in body.documents]
        scores = await self._http_scores(body.query, texts, request)
        order = ranked(scores)[:body.top_n]
        return {"id": str(uuid.uuid4()),
                "results": [{"index": i, "relevance_score": scores[i],
                             **({"document": {"text": texts[i]}} if body.return_documents else {})} for i in order],
                "meta": {"api_version": {"version": "1"}, "billed_units": {"search_units": 1}}}

    @api.get("/health")
    async def health(self) -> dict:
        return {"status": "ok", "backend": self.teacher.backend, "model": self.teacher.name,
                "pairs_scored": self.pairs_scored, "batches": self.batches}


def resolve_num_gpus(cfg: TeacherConfig) -> float:
    """GPUs per replica: the configured value, else ``gpu_fraction`` when the cluster has GPUs."""
    if cfg.num_gpus is not None:
        return cfg.num_gpus
    import ray

    return cfg.gpu_fraction if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def build_app(cfg: TeacherConfig):
    """The Serve application (bound deployment) for ``cfg``."""
    return TeacherDeployment.options(
        ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": resolve_num_gpus(cfg)},
        autoscaling_config={"min_replicas": cfg.min_replicas, "initial_replicas": max(1, cfg.min_replicas),
                            "max_replicas": cfg.max_replicas,
                            "target_ongoing_requests": cfg.target_ongoing_requests},
        max_ongoing_requests=max(cfg.max_ongoing_requests, cfg.max_batch_size),
    ).bind(cfg)


def start_teacher(cfg: TeacherConfig | None = None, *, address: str | None = None):
    """Start (or redeploy) the teacher on Ray Serve and return its DeploymentHandle.

    Joins Ray at ``address`` or starts a local one (:func:`cluster.runtime.connect`). HTTP listens
    on ``cfg.host:cfg.port`` when this call starts Serve; an already-running Serve keeps its port.
    """
    from cluster.runtime import connect

    cfg = cfg or TeacherConfig()
    connect(address)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    return serve.run(build_app(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix)


def teacher_handle(app_name: str = "teacher"):
    """Handle of a teacher already running in this Ray cluster (e.g. ``synthrag serve teacher``)."""
    return serve.get_app_handle(app_name)


def score_pairs(handle, query: str, passages: list[str]) -> list[float]:
    """Scores of ``passages`` for ``query`` through a teacher DeploymentHandle (blocking)."""
    return handle.score.remote(query, passages).result()


def score_many(handle, queries: list[str], passages: list[list[str]]) -> list[list[float]]:
    """Many requests at once, so the replicas batch them; results aligned with the inputs."""
    responses = [handle.score.remote(q, ps) for q, ps in zip(queries, passages, strict=True)]
    return [r.result() for r in responses]
