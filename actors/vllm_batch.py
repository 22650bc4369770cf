"""The ``vllm`` engine on Ray's batch-LLM layer (``ray.data.llm``; ``llm.vllm_backend: ray-data-llm``).

Ray serves: :func:`processor_config` maps our LLMConfig to a ``vLLMEngineProcessorConfig`` (engine
kwargs incl. tensor/pipeline parallel sizes, batch size, autoscaling pool, ``should_continue_on_error``)
whose stages apply the chat template, tokenize and run vLLM's async engine, one request per row.
What a stage means stays ours, in the processor's pre/post-processing: :func:`to_request` (messages,
per-row seeds, guided decoding as ``structured_outputs``), :func:`from_reply` (parse, validate,
check; a row vLLM failed, ``__inference_error__``, becomes an ``engine_error`` reject with its
message), scoring on ``prompt_logprobs``. Retries and best-of-n are passes: a pass sends every
candidate of one attempt (one request each: Ray keeps only ``outputs[0]``, so vLLM's ``n`` cannot
carry them), keeps each row's first passing candidate and is materialized; only the rows still
failing go on to the next pass, at ``retry_temperature`` with LLMActor's seeds. Finished rows get
LLMActor's own columns. Where Ray's tokenize stage would double the BOS, we tokenize (like transformers).
"""

from __future__ import annotations

import json
import math
import pickle
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from actors.llm import (
    Check,
    LLMActor,
    LLMConfig,
    ParseError,
    TokenScores,
    Usage,
    _per_token,
    parse_reply,
    row_prompt,
    row_seed,
)
from prompts import Prompt, Sampling

# the row protocol of Ray's vLLM stage (ray/llm/_internal/batch/stages/vllm_engine_stage.py)
ERROR = "__inference_error__"  # non-empty on a row the engine failed (should_continue_on_error)
ENGINE_STAGE = "vLLMEngineStage"

# our columns while a stage is in flight: the input row travels packed, so that none of its
# columns ("prompt", "messages", "model", ...) can collide with the processor's own
ID, ROW, STATE, KIND, OPEN = "__synthrag_id", "__synthrag_row", "__synthrag_state", "__synthrag_kind", "__synthrag_open"
ATTEMPT, CAND, RESULT = "__synthrag_attempt", "__synthrag_cand", "__synthrag_result"
CONT_START, CONT_IDS = "__synthrag_cont_start", "__synthrag_cont_ids"
_CARRY = (ID, ROW, STATE, KIND, ATTEMPT, CAND)

DTYPES = {"auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


# ----------------------------------------------------------------------------- config
def model_source(cfg: LLMConfig) -> str:
    return str(Path(cfg.model).expanduser())


def engine_kwargs(cfg: LLMConfig) -> dict:
    """vLLM engine arguments: the same engine :class:`~actors.llm.VLLMEngine` builds."""
    kw: dict[str, Any] = dict(tensor_parallel_size=cfg.tensor_parallel_size,
                              pipeline_parallel_size=cfg.pipeline_parallel_size,
                              dtype=DTYPES[cfg.dtype], seed=cfg.seed,
                              gpu_memory_utilization=cfg.gpu_memory_utilization,
                              # automatic prefix caching: the prompt files put the shared part first
                              enable_prefix_caching=cfg.prefix_cache > 0)
    if cfg.max_model_len:
        kw["max_model_len"] = cfg.max_model_len
    if cfg.logprobs_mode != "raw_logprobs":
        kw["logprobs_mode"] = cfg.logprobs_mode
    return kw


def processor_config(cfg: LLMConfig, *, tokenized: bool = False, **overrides):
    """The ``vLLMEngineProcessorConfig`` of ``cfg``. By default Ray's chat-template and tokenize
    stages feed the engine (rows hold ``messages``); ``tokenized``: the rows carry their own
    token ids (``tokenized_prompt``: scoring, or a model Ray's stages would give two BOS tokens,
    see :func:`ray_doubles_bos`), so both are off. vLLM detokenizes itself (no detokenize
    stage). ``overrides``: any other processor field (``max_concurrent_batches``,
    ``accelerator_type``, ...); an ``engine_kwargs`` override is merged into ours."""
    from ray.data.llm import vLLMEngineProcessorConfig

    kw: dict[str, Any] = dict(
        model_source=model_source(cfg),
        engine_kwargs=engine_kwargs(cfg),
        batch_size=cfg.batch_size,
        concurrency=tuple(cfg.concurrency),  # an autoscaling engine pool, (min, max)
        should_continue_on_error=True,  # a failed row comes back with its error, as a reject
        chat_template_stage=not tokenized,
        tokenize_stage=not tokenized,
        detokenize_stage=False,
        accelerator_type=None,
    )
    kw["engine_kwargs"].update(overrides.pop("engine_kwargs", None) or {})
    kw.update(overrides)
    return vLLMEngineProcessorConfig(**kw)


# ----------------------------------------------------------------------------- requests and replies
def candidates(prompt: Prompt, cfg: LLMConfig) -> int:
    """Candidates per row and attempt (best-of-n), as :class:`~actors.llm.LLMActor` counts them."""
    return cfg.best_of or prompt.sampling.best_of


def candidate_seed(prompt: Prompt, cfg: LLMConfig, attempt: int, candidate: int = 0) -> int:
    """The ``seed`` column of candidate ``candidate`` of attempt ``attempt``."""
    return cfg.seed + attempt * candidates(prompt, cfg) + candidate


def sampling(prompt: Prompt, cfg: LLMConfig, attempt: int = 0, candidate: int = 0) -> Sampling:
    """The prompt's sampling for the first candidate of the first attempt; every other candidate
    of a greedy prompt samples at ``retry_temperature``."""
    s = prompt.sampling
    if cfg.max_tokens:
        s = s.model_copy(update={"max_tokens": cfg.max_tokens})
    if (attempt, candidate) != (0, 0) and s.temperature == 0:
        s = s.model_copy(update={"temperature": cfg.retry_temperature})
    return s


def _guided(prompt: Prompt, cfg: LLMConfig) -> bool:
    return cfg.guided and prompt.schema is not None


def forced_prefix(prompt: Prompt, cfg: LLMConfig) -> str:
    """The reply start forced on the engine (as an assistant message the chat template continues)
    and put back in front of the reply; none under guided decoding, which shapes the whole reply
    (as on the transformers engine)."""
    return "" if _guided(prompt, cfg) else prompt.response_prefix


def prompt_ids(tok, messages: list[dict], prefix: str = "") -> list[int]:
    """A conversation's token ids as the transformers engine makes them: the chat template's
    text (with the generation prompt), then the forced reply start, no special tokens added."""
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tok(text + prefix, add_special_tokens=False)["input_ids"])


def ray_doubles_bos(tok) -> bool:
    """Whether Ray's tokenize stage would start this model's prompts with two BOS tokens: it
    tokenizes the chat template's text with the tokenizer's special tokens, and templates that
    write the BOS themselves (Llama 3, ...) then get a second one from a tokenizer that adds it."""
    bos = getattr(tok, "bos_token_id", None)
    if bos is None or not getattr(tok, "chat_template", True):
        return False
    text = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    ids = list(tok([text])["input_ids"][0])  # as TokenizeUDF calls it
    return len(ids) > 1 and ids[0] == bos and ids[1] == bos


def to_request(row: dict, prompt: Prompt, cfg: LLMConfig, attempt: int = 0, seed: int | None = None, *,
               candidate: int = 0, tokenizer=None) -> dict:
    """The request fields of one candidate for Ray's vLLM stage: ``messages`` for Ray's
    chat-template stage (or, given the model's ``tokenizer``, our own ``tokenized_prompt``, see
    :func:`prompt_ids`) and ``sampling_params`` (``vllm.SamplingParams`` kwargs; the schema as
    ``structured_outputs.json``, JSON text so it crosses Arrow unchanged). ``seed``: the
    candidate's seed (the ``seed`` column; by default ``seed + attempt * n + candidate``), mixed
    with the row's prompt as on every engine (:func:`~actors.llm.row_seed`). The row's own
    columns travel beside these (see :func:`vllm_map`), not in them."""
    prompt = row_prompt(prompt, row)
    if seed is None:
        seed = candidate_seed(prompt, cfg, attempt, candidate)
    msgs = prompt.messages(row)
    s = sampling(prompt, cfg, attempt, candidate)
    params = dict(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=row_seed(seed, msgs),
                  structured_outputs={"json": json.dumps(prompt.schema)} if _guided(prompt, cfg) else None)
    prefix = forced_prefix(prompt, cfg)
    if tokenizer is not None:
        return {"tokenized_prompt": prompt_ids(tokenizer, msgs, prefix), "sampling_params": params}
    if prefix:  # an assistant turn the chat template continues
        msgs = [*msgs, {"role": "assistant", "content": prefix}]
    return {"messages": msgs, "sampling_params": params}


def usage(out: dict) -> Usage:
    """One request's cost: its token counts and its own engine time (``time_taken_llm``; vLLM's
    prefix-cache hits are not in Ray's output row, so ``cached`` stays 0)."""
    return Usage(prompt=int(out.get("num_input_tokens") or 0), generated=int(out.get("num_generated_tokens") or 0),
                 seconds=max(0.0, float(out.get("time_taken_llm") or 0.0)), candidates=1)


def from_reply(row: dict, prompt: Prompt, check: Check | None, out: dict,
               cfg: LLMConfig) -> tuple[Any, str, str | None, Usage]:
    """(parsed reply or None, raw text, error or None, cost) of one engine output row ``out``,
    with the error texts :class:`~actors.llm.LLMActor` writes (so the same ``reject_reason``):
    the engine's own message for a failed row (``engine_error: ...``), ``truncated`` for a reply
    that used its whole token budget, parse/schema errors, ``check_failed`` for a crashing check
    and the check's own reason."""
    prompt = row_prompt(prompt, row)
    cost = usage(out)
    failure = out.get(ERROR) or ""
    if failure:
        return None, "", f"engine_error: {failure}"[:300], Usage(seconds=cost.seconds, candidates=1)
    raw = forced_prefix(prompt, cfg) + (out.get("generated_text") or "")
    try:
        obj = parse_reply(prompt, raw)
        err = check(row, obj) if check else None
    except ParseError as e:
        obj, err = None, str(e)
        budget = sampling(prompt, cfg).max_tokens
        if cost.generated >= budget:  # not a bad reply: one the budget cut off
            err = f"truncated: the reply used all {budget} tokens of its budget ({err})"
    except Exception as e:  # a check that crashes on odd output is a bad reply
        obj, err = None, f"check_failed: {type(e).__name__}: {e}"
    return (obj if err is None else None), raw, err, cost


def pick(cands: list[tuple[Any, str, str | None, Usage]], attempt: int) -> tuple[Any, str, str | None, Usage]:
    """One attempt's result from its candidates, in candidate order: the first that passed
    (``tries`` its 1-based index over all attempts), else the first one's error with the others'."""
    n = len(cands)
    if n == 1:
        obj, raw, err, c = cands[0]
        return obj, raw, err, c.tried(attempt + 1)
    cost = sum((c[3] for c in cands), Usage())
    j = next((j for j, c in enumerate(cands) if c[2] is None), None)
    if j is None:
        obj, raw, err, _ = cands[0]
        others = "; ".join(c[2][:80] for c in cands[1:])
        return None, raw, f"{err} [best of {n}; others: {others}]", cost.tried(attempt * n + n)
    return cands[j][0], cands[j][1], None, cost.tried(attempt * n + j + 1)


# ----------------------------------------------------------------------------- scoring (prompt log-probs)
@lru_cache(maxsize=4)
def _tokenizer(model: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def score_request(row: dict, prompt: Prompt, cfg: LLMConfig, tokenizer=None) -> list[dict]:
    """One request per continuation of a scoring prompt: the chat-templated context's token ids
    followed by the continuation's (``tokenized_prompt``; tokenized apart, as
    :meth:`~actors.llm.VLLMEngine.score_tokens` does), nothing generated, and the actual token's
    log-prob at every prompt position (``prompt_logprobs: 0``)."""
    tok = tokenizer or _tokenizer(model_source(cfg))
    ctx = prompt_ids(tok, prompt.messages(row))
    out = []
    for c in prompt.render_continuations(row):
        cont = list(tok(c, add_special_tokens=False)["input_ids"])
        out.append({"tokenized_prompt": ctx + cont, "sampling_params": {"max_tokens": 1, "prompt_logprobs": 0},
                    CONT_START: len(ctx), CONT_IDS: cont})
    return out


def _as_list(x) -> list:
    return x.tolist() if hasattr(x, "tolist") else list(x or [])


def continuation_values(out: dict) -> list[float]:
    """The continuation's per-token values from an engine row's ``prompt_logprobs`` (per prompt
    position: {token id: {"logprob": ...}}; a log-prob, or a raw logit under
    ``logprobs_mode: raw_logits``)."""
    table, start = _as_list(out.get("prompt_logprobs")), int(out[CONT_START])
    values = []
    for j, t in enumerate(_as_list(out[CONT_IDS])):
        entry = table[start + j] or {}
        hit = entry.get(t, entry.get(str(t)))
        if hit is None:
            raise KeyError(f"prompt_logprobs has no entry for token {t} at position {start + j}")
        values.append(float(hit["logprob"] if isinstance(hit, dict) else hit))
    return values


def from_score_reply(row: dict, prompt: Prompt, check: Check | None, outs: list[dict],
                     cfg: LLMConfig) -> tuple[Any, str, str | None, Usage]:
    """A scoring prompt's reply from its continuations' engine rows (each with ``values``, or
    the ``prompt_logprobs`` to take them from): ``{"logprobs": [...], "tokens": [...]}`` (and
    ``token_logprobs``/``token_logits`` when ``per_token``), as :class:`~actors.llm.LLMActor`
    writes it; an engine failure on any continuation rejects the row (``engine_error``)."""
    cost = Usage(prompt=sum(int(o.get("num_input_tokens") or 0) for o in outs),
                 seconds=sum(max(0.0, float(o.get("time_taken_llm") or 0.0)) for o in outs), candidates=1)
    failure = next((o[ERROR] for o in outs if o.get(ERROR)), "")
    if failure:
        return None, "", f"engine_error: {failure}"[:300], Usage(seconds=cost.seconds, candidates=1)
    logits = cfg.logprobs_mode == "raw_logits"
    scored = []
    for o in outs:
        values = list(o["values"]) if o.get("values") is not None else continuation_values(o)
        scored.append(TokenScores(None, values) if logits else TokenScores(values))
    if prompt.per_token:
        pairs = [_per_token(t) for t in scored]
    elif logits:
        raise NotImplementedError("llm.logprobs_mode raw_logits gives logits, not log-probs: "
                                  "only per-token scoring prompts can use it")
    else:
        pairs = [(float(sum(t.logprobs)), len(t.logprobs)) for t in scored]
    obj = {"logprobs": [p[0] for p in pairs], "tokens": [p[1] for p in pairs]}
    if prompt.per_token:
        obj["token_logprobs"], obj["token_logits"] = [p[2] for p in pairs], [p[3] for p in pairs]
    try:
        err = check(row, obj) if check else None
    except Exception as e:
        err = f"check_failed: {type(e).__name__}: {e}"
    return (obj if err is None else None), json.dumps(obj), err, cost


# ----------------------------------------------------------------------------- the stage on Ray Data
def _pack_row(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def _unpack_row(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


class _Stage:
    """What one ``vllm_map`` call knows: its config, prompts and check. Its methods are the row
    functions of the passes (Ray pickles them with this object)."""

    def __init__(self, cfg: LLMConfig, prompt: str | dict[str, str], stage: str, check: Check | None,
                 prompt_search: list[str] | None, prompt_key: str | None, own_tokens: bool = False):
        import prompts as prompt_files

        if isinstance(prompt, dict) and not prompt_key:
            raise ValueError("a prompt mapping needs prompt_key: the column that selects the prompt")
        names = prompt if isinstance(prompt, dict) else {None: prompt}
        self.cfg, self.stage, self.check, self.prompt_key = cfg, stage, check, prompt_key
        self.own_tokens = own_tokens  # generation rows carry our token ids, not messages
        self.prompts = {k: prompt_files.load(v, search=prompt_search, variant=cfg.variant) for k, v in names.items()}
        self.prompt = next(iter(self.prompts.values()))
        for p in self.prompts.values():
            if p.continuations is not None and not p.per_token and cfg.logprobs_mode == "raw_logits":
                raise NotImplementedError("llm.logprobs_mode raw_logits gives logits, not log-probs: "
                                          f"only per-token scoring is available ({p.id})")

    # the input row and its prompt
    def row(self, r: dict) -> dict:
        return _unpack_row(r[ROW]).to_pylist()[0]

    def prompt_of(self, row: dict) -> Prompt | None:
        return self.prompts.get(row[self.prompt_key] if self.prompt_key else None)

    def fanout(self, prompt: Prompt) -> int:
        return len(prompt.continuations) if prompt.continuations is not None else candidates(prompt, self.cfg)

    def pack(self, batch: pa.Table) -> pa.Table:
        """Input rows -> state rows; a row naming no prompt is finished at once (``unknown_prompt``)."""
        ids, packed, states, kinds, open_ = [], [], [], [], []
        for i, row in enumerate(batch.to_pylist()):
            p = self.prompt_of(row)
            done = None
            if p is None:
                done = (None, "", f"unknown_prompt: no prompt for {self.prompt_key}={row[self.prompt_key]!r}", 1,
                        Usage())
            ids.append(uuid.uuid4().hex)
            packed.append(_pack_row(batch.slice(i, 1)))
            states.append(pickle.dumps({"spent": Usage(), "done": done}))
            kinds.append("none" if p is None else self.kind(p))
            open_.append(p is not None)
        return pa.table({ID: pa.array(ids, pa.string()), ROW: pa.array(packed, pa.binary()),
                         STATE: pa.array(states, pa.binary()), KIND: pa.array(kinds, pa.string()),
                         OPEN: pa.array(open_, pa.bool_())})

    def expand(self, r: dict, attempt: int) -> list[dict]:
        """A state row -> one request row per candidate (or continuation)."""
        n = self.fanout(self.prompt_of(self.row(r)))
        return [{ID: r[ID], ROW: r[ROW], STATE: r[STATE], KIND: r[KIND], ATTEMPT: attempt, CAND: j} for j in range(n)]

    # the processor's pre/post-processing
    def preprocess(self, r: dict) -> dict:
        row = self.row(r)
        p = self.prompt_of(row)
        if r[KIND] == "score":
            return score_request(row, p, self.cfg)[r[CAND]]
        return to_request(row, p, self.cfg, r[ATTEMPT], candidate=r[CAND],
                          tokenizer=_tokenizer(model_source(self.cfg)) if self.own_tokens else None)

    def routes(self, attempt: int) -> list[tuple[bool, tuple[str, ...]]]:
        """This attempt's passes: (whether the rows carry token ids, the kinds of rows it runs);
        scoring is deterministic, so it runs once."""
        kinds = ("gen", "score") if attempt == 0 else ("gen",)
        by: dict[bool, tuple[str, ...]] = {}
        for kind in kinds:
            tokenized = kind == "score" or self.own_tokens
            by[tokenized] = (*by.get(tokenized, ()), kind)
        return list(by.items())

    def kind(self, p: Prompt) -> str:
        return "score" if p.continuations is not None else "gen"

    def _result(self, r: dict) -> tuple:
        row = self.row(r)
        p = self.prompt_of(row)
        if r[KIND] == "score":
            failure, values = r.get(ERROR) or "", None
            if not failure:
                try:
                    values = continuation_values(r)
                except Exception as e:  # an engine reply without the log-probs asked for
                    failure = f"{type(e).__name__}: {e}"
            return ("score", values, int(r.get("num_input_tokens") or 0), float(r.get("time_taken_llm") or 0.0),
                    failure)
        return ("gen", from_reply(row, p, self.check, r, self.cfg))

    def postprocess(self, r: dict) -> dict:
        """A row the engine answered (Ray passes failed rows around postprocess: see :meth:`settle`)."""
        return {**{k: r[k] for k in _CARRY}, RESULT: pickle.dumps(self._result(r))}

    def settle(self, r: dict) -> dict:
        """After the processor: the rows the engine failed get their result here."""
        if RESULT in r and r[RESULT] is not None and not (r.get(ERROR) or ""):
            return {k: r[k] for k in (*_CARRY, RESULT)}
        return {**{k: r[k] for k in _CARRY}, RESULT: pickle.dumps(self._result(r))}

    def combine(self, batch: pa.Table) -> pa.Table:
        """Request rows (all candidates of some rows) -> the rows' new state."""
        groups: dict[str, list[dict]] = {}
        for r in batch.to_pylist():
            groups.setdefault(r[ID], []).append(r)
        out = {ID: [], ROW: [], STATE: [], KIND: [], OPEN: []}
        for rid, rs in groups.items():
            rs.sort(key=lambda r: r[CAND])
            first, attempt = rs[0], rs[0][ATTEMPT]
            state = pickle.loads(first[STATE])
            results = [pickle.loads(r[RESULT]) for r in rs]
            row = self.row(first)
            p = self.prompt_of(row)
            if first[KIND] == "score":
                outs = [{"values": v, "num_input_tokens": n, "time_taken_llm": s, ERROR: e}
                        for _, v, n, s, e in results]
                obj, raw, err, cost = from_score_reply(row, p, self.check, outs, self.cfg)
                state["done"] = (obj, raw, err, 1, cost)
                more = False  # deterministic: never retried
            else:
                obj, raw, err, cost = pick([res for _, res in results], attempt)
                state["spent"] = state["spent"] + cost
                state["done"] = (obj, raw, err, attempt + 1, state["spent"])
                more = err is not None and attempt < self.cfg.max_retries
            for k, v in ((ID, rid), (ROW, first[ROW]), (STATE, pickle.dumps(state)), (KIND, first[KIND]), (OPEN, more)):
                out[k].append(v)
        return pa.table({ID: pa.array(out[ID], pa.string()), ROW: pa.array(out[ROW], pa.binary()),
                         STATE: pa.array(out[STATE], pa.binary()), KIND: pa.array(out[KIND], pa.string()),
                         OPEN: pa.array(out[OPEN], pa.bool_())})

    def output(self, batch: pa.Table) -> pa.Table:
        """Finished state rows -> the input rows with LLMActor's output columns."""
        if batch.num_rows == 0:
            return batch.select([])
        tables = [_unpack_row(b) for b in batch.column(ROW).to_pylist()]
        rows_table = pa.concat_tables(tables, promote_options="permissive")
        done = [pickle.loads(s)["done"] for s in batch.column(STATE).to_pylist()]
        return _Columns(self).table(rows_table, rows_table.to_pylist(), done)


class _Columns:
    """LLMActor's own column writer (``LLMActor._table``) over this stage's settings, so the two
    paths cannot drift apart."""

    def __init__(self, st: _Stage):
        from types import SimpleNamespace

        actor = LLMActor.__new__(LLMActor)
        actor.cfg, actor.prompts, actor.prompt, actor.prompt_key, actor.stage = (
            st.cfg, st.prompts, st.prompt, st.prompt_key, st.stage)
        actor.engine = SimpleNamespace(name=str(st.cfg.model))  # VLLMEngine's name
        self.actor = actor

    def table(self, batch: pa.Table, rows: list[dict], done: list) -> pa.Table:
        return self.actor._table(batch, rows, done)


def build(st: _Stage, tokenized: bool, engine_stage=None):
    """A processor for this stage's rows; ``engine_stage`` (tests only) replaces Ray's vLLM stage
    with a stage speaking the same row protocol."""
    from ray.data.llm import build_processor

    proc = build_processor(processor_config(st.cfg, tokenized=tokenized), preprocess=st.preprocess,
                           postprocess=st.postprocess)
    if engine_stage is not None:
        proc.stages[ENGINE_STAGE] = engine_stage
    return proc


def _where(ds, column: str, values: tuple):
    import pyarrow.compute as pc

    return ds.map_batches(lambda t: t.filter(pc.is_in(t[column], value_set=pa.array(values))), batch_format="pyarrow")


def vllm_map(ds, *, llm: LLMConfig, prompt: str | dict[str, str], stage: str, check: Check | None = None,
             prompt_search: list[str] | None = None, prompt_key: str | None = None, rows: int | None = None,
             tokens_by: str = "auto", engine_stage=None):
    """:func:`~actors.llm.llm_map` for ``llm.engine: vllm`` on ``ray.data.llm``: the same output
    rows and columns, rejects instead of exceptions. The passes run here (each materialized); the
    dataset returned lazily turns the finished rows into output rows. Row order is not kept.
    ``tokens_by``: who renders the chat template and tokenizes generation prompts: ``ray`` (its
    stages), ``synthrag`` (:func:`prompt_ids`, like the transformers engine), ``auto``: Ray's
    unless they would double the model's BOS token (:func:`ray_doubles_bos`).
    ``engine_stage``: for tests only (see :func:`build`)."""
    if tokens_by not in ("auto", "ray", "synthrag"):
        raise ValueError(f"tokens_by must be auto, ray or synthrag, not {tokens_by!r}")
    own = tokens_by == "synthrag"
    if tokens_by == "auto":
        try:  # the driver may not see the model directory (then Ray's stages, which load it where they run)
            own = ray_doubles_bos(_tokenizer(model_source(llm)))
        except Exception:
            own = False
    st = _Stage(llm, prompt, stage, check, prompt_search, prompt_key, own_tokens=own)
    if rows:
        ds = ds.repartition(max(1, min(2000, -(-rows // llm.batch_size))))
    state = ds.map_batches(st.pack, batch_format="pyarrow", batch_size=llm.batch_size).materialize()
    finished = [_where(state, OPEN, (False,))]
    pending = _where(state, OPEN, (True,)).materialize()
    procs: dict[bool, Any] = {}
    for attempt in range(llm.max_retries + 1):
        parts = []
        for tokenized, kinds in st.routes(attempt):
            todo = _where(pending, KIND, kinds).materialize()
            n = todo.count()
            if not n:
                continue
            if tokenized not in procs:
                procs[tokenized] = build(st, tokenized, engine_stage)
            fan = max(st.fanout(p) for p in st.prompts.values() if st.kind(p) in kinds)
            reqs = todo.flat_map(lambda r, a=attempt: st.expand(r, a)) if fan > 1 else \
                todo.map(lambda r, a=attempt: st.expand(r, a)[0])
            done = procs[tokenized](reqs).map(st.settle)
            if fan > 1:  # a row's candidates (continuations) meet again
                done = done.groupby(ID, num_partitions=max(1, min(64, math.ceil(n / 1000)))) \
                    .map_groups(st.combine, batch_format="pyarrow")
            else:
                done = done.map_batches(st.combine, batch_format="pyarrow")
            parts.append(done.materialize())
        if not parts:
            break
        passed = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
        finished.append(_where(passed, OPEN, (False,)))
        pending = _where(passed, OPEN, (True,)).materialize()
        if not pending.count():
            break
    out = finished[0].union(*finished[1:]) if len(finished) > 1 else finished[0]
    return out.map_batches(st.output, batch_format="pyarrow", batch_size=llm.batch_size)
