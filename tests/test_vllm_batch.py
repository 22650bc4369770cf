"""The vllm engine on Ray's batch-LLM layer (actors/vllm_batch.py).

vLLM cannot be installed here: these tests check the translation from our config and prompts to
``ray.data.llm``'s processor config and request rows, the replies back into our rows, and the
pass logic (retries, best-of-n, scoring) on real Ray processors whose vLLM stage alone is
replaced by :class:`ScriptedVLLMStageUDF`, a stand-in speaking that stage's row protocol. The
last test runs real vLLM where it exists (GPU hosts).
"""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest

import prompts
from actors import llm as llm_mod
from actors import vllm_batch as vb
from actors.llm import LLMActor, LLMConfig, Usage, row_seed


def _by_value():
    # Ray's workers cannot import this test module: its check functions and the scripted stage
    # travel to them by value
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


_by_value()


def vllm_cfg(model, **kw) -> LLMConfig:
    return LLMConfig(engine="vllm", model=str(model), **kw)


# ----------------------------------------------------------------------------- processor config
def test_processor_config_carries_our_engine_settings_into_rays_stages(ray_local, tiny_llm):
    from ray.data.llm import build_processor

    cfg = vllm_cfg(tiny_llm, tensor_parallel_size=2, pipeline_parallel_size=2, dtype="bf16", max_model_len=4096,
                   batch_size=16, concurrency=(1, 3), prefix_cache=0, seed=5, gpu_memory_utilization=0.8,
                   logprobs_mode="raw_logits")
    conf = vb.processor_config(cfg, max_concurrent_batches=4)
    assert conf.model_source == str(tiny_llm)
    assert conf.engine_kwargs == dict(tensor_parallel_size=2, pipeline_parallel_size=2, dtype="bfloat16", seed=5,
                                      gpu_memory_utilization=0.8, enable_prefix_caching=False, max_model_len=4096,
                                      logprobs_mode="raw_logits", task_type="generate")
    assert (conf.batch_size, conf.concurrency, conf.max_concurrent_batches) == (16, (1, 3), 4)
    assert conf.should_continue_on_error is True and conf.accelerator_type is None

    proc = build_processor(conf)
    assert proc.list_stage_names() == ["ChatTemplateStage", "TokenizeStage", "vLLMEngineStage"]
    engine = proc.get_stage_by_name("vLLMEngineStage")
    kw, mb = engine.fn_constructor_kwargs, engine.map_batches_kwargs
    assert kw["should_continue_on_error"] is True
    assert (kw["batch_size"], kw["max_concurrent_batches"], kw["model"]) == (16, 4, str(tiny_llm))
    assert kw["engine_kwargs"]["tensor_parallel_size"] == 2 and kw["engine_kwargs"]["pipeline_parallel_size"] == 2
    assert kw["engine_kwargs"]["dtype"] == "bfloat16" and kw["engine_kwargs"]["max_model_len"] == 4096
    # tp x pp = 4 GPUs per engine: Ray's executor places them in a placement group of 4 bundles
    assert kw["engine_kwargs"]["distributed_executor_backend"] == "ray" and mb["num_gpus"] == 0
    assert mb["ray_remote_args_fn"].args[0] == 4
    assert (mb["compute"].min_size, mb["compute"].max_size, mb["max_concurrency"]) == (1, 3, 4)
    # the chat template is Ray's stage, on the model's own template
    chat = proc.get_stage_by_name("ChatTemplateStage")
    assert chat.fn_constructor_kwargs["model"] == str(tiny_llm) and chat.fn_constructor_kwargs["chat_template"] is None
    # our request rows hold what the first stage and the engine stage require
    req = vb.to_request({"text": "Bees make honey."}, prompts.load("test/echo_question"), cfg)
    assert set(chat.get_required_input_keys()) | set(engine.get_required_input_keys()) <= set(req)

    one = build_processor(vb.processor_config(vllm_cfg(tiny_llm)))  # the defaults: one GPU per engine
    e1 = one.get_stage_by_name("vLLMEngineStage")
    assert e1.fn_constructor_kwargs["engine_kwargs"]["distributed_executor_backend"] == "uni"
    assert e1.map_batches_kwargs["num_gpus"] == 1
    assert e1.fn_constructor_kwargs["engine_kwargs"]["dtype"] == "auto"
    assert e1.fn_constructor_kwargs["engine_kwargs"]["enable_prefix_caching"] is True
    assert "logprobs_mode" not in e1.fn_constructor_kwargs["engine_kwargs"]

    # rows that carry their own token ids (scoring): the engine stage alone
    scoring = build_processor(vb.processor_config(vllm_cfg(tiny_llm), tokenized=True))
    assert scoring.list_stage_names() == ["vLLMEngineStage"]


def test_the_new_settings_leave_existing_cache_keys_alone():
    fp = LLMConfig().fingerprint()
    assert "vllm_backend" not in fp and "pipeline_parallel_size" not in fp
    assert LLMConfig().vllm_backend == "ray-data-llm"
    with pytest.raises(ValueError):
        LLMConfig(vllm_backend="serve")


# ----------------------------------------------------------------------------- requests
ROW = {"clues": ["Bees make honey from nectar.", "Honey never spoils when sealed."]}


def test_request_rows_of_a_ragsynth_prompt():
    p = prompts.load("ragsynth/qa")
    cfg = LLMConfig(engine="vllm", model="/m", seed=11, retry_temperature=0.6)
    msgs = p.messages(ROW)
    assert "Honey never spoils" in msgs[-1]["content"]

    req = vb.to_request(ROW, p, cfg, 0)
    assert req["messages"] == msgs  # guided: the grammar shapes the reply, no forced prefix
    assert req["sampling_params"] == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 160,
                                      "seed": row_seed(11, msgs),
                                      "structured_outputs": {"json": json.dumps(p.schema)}}
    assert json.loads(req["sampling_params"]["structured_outputs"]["json"]) == p.schema

    free = vb.to_request(ROW, p, cfg.model_copy(update={"guided": False, "max_tokens": 64}), 0)
    assert free["sampling_params"]["structured_outputs"] is None
    assert free["sampling_params"]["max_tokens"] == 64
    # unguided, the reply start is forced as an assistant turn the chat template continues
    assert free["messages"] == [*msgs, {"role": "assistant", "content": '{"question": "'}]
    raw = vb.from_reply(ROW, p, None, {"generated_text": 'Why?", "answer": []}', ERR: ""},
                        cfg.model_copy(update={"guided": False}))[1]
    assert raw == '{"question": "Why?", "answer": []}'

    retry = vb.to_request(ROW, p, cfg, 1)["sampling_params"]
    assert (retry["temperature"], retry["seed"]) == (0.6, row_seed(12, msgs))

    # a row with its own schema (llm_schema) is decoded under it and validated against it
    own = {"type": "object", "properties": {"question": {"type": "string", "pattern": "^Why [a-z ]+[?]$"}},
           "required": ["question"]}
    row = {**ROW, "llm_schema": json.dumps(own)}
    assert json.loads(vb.to_request(row, p, cfg, 0)["sampling_params"]["structured_outputs"]["json"]) == own
    assert vb.from_reply(row, p, None, {"generated_text": '{"question": "Why not?"}', ERR: ""}, cfg)[2] is None
    assert vb.from_reply(row, p, None, {"generated_text": '{"question": "What?"}', ERR: ""}, cfg)[2].startswith("schema")


def test_best_of_n_candidates_and_seeds_are_those_of_the_actor():
    p = prompts.load("ragsynth/qa")
    cfg = LLMConfig(engine="vllm", model="/m", seed=20, best_of=3, retry_temperature=0.9)
    msgs = p.messages(ROW)
    first = [vb.to_request(ROW, p, cfg, 0, candidate=j)["sampling_params"] for j in range(3)]
    assert [s["temperature"] for s in first] == [0.0, 0.9, 0.9]  # candidate 1 greedy, the others sampled
    assert [s["seed"] for s in first] == [row_seed(20 + j, msgs) for j in range(3)]
    again = vb.to_request(ROW, p, cfg, 1, candidate=0)["sampling_params"]
    assert (again["temperature"], again["seed"]) == (0.9, row_seed(23, msgs))
    # a row's seed is its own: the same row draws the same, another row draws another
    assert vb.to_request(dict(ROW), p, cfg, 0)["sampling_params"] == first[0]
    other = {"clues": ["Owls hunt at night."]}
    assert vb.to_request(other, p, cfg, 0)["sampling_params"]["seed"] != first[0]["seed"]
    # an explicit seed (the candidate's) is used as given
    assert vb.to_request(ROW, p, cfg, 0, 99)["sampling_params"]["seed"] == row_seed(99, msgs)


# ----------------------------------------------------------------------------- replies
ERR = vb.ERROR
ECHO = {"text": "Bees make honey."}


class OneReply:
    """An engine for LLMActor that answers every row with one text (or raises)."""

    def __init__(self, raw: str | Exception, generated: int = 0):
        self.name, self.raw, self.generated, self.last_usage = "m", raw, generated, []

    def generate(self, messages, sampling, seeds, schema, prefix):
        if isinstance(self.raw, Exception):
            raise self.raw
        self.last_usage = [Usage(prompt=30, generated=self.generated) for _ in messages]
        return [self.raw for _ in messages]


def off_topic(row, reply):
    return "off_topic: mentions the sky" if "sky" in reply["question"] else None


def crashing(row, reply):
    return reply["missing"]


@pytest.mark.parametrize("raw,generated,check,reason", [
    ('{"question": "Who makes honey?"}', 9, None, None),
    ('{"question": "Who makes honey?', 9, None, "unparsable_reply"),
    ("I cannot answer that.", 6, None, "unparsable_reply"),
    ('{"question": "Why?"}', 7, None, "schema_violation"),
    ('{"question": "Who makes honey?', 48, None, "truncated"),
    ('{"question": "Why is the sky blue?"}', 12, off_topic, "off_topic"),
    ('{"question": "Who makes honey?"}', 9, crashing, "check_failed"),
    (RuntimeError("CUDA error: device-side assert triggered"), 0, None, "engine_error"),
])
def test_replies_become_the_rows_and_rejects_the_actor_writes(monkeypatch, raw, generated, check, reason):
    cfg = LLMConfig(engine="vllm", model="/m", max_retries=0)
    p = prompts.load("test/echo_question")
    monkeypatch.setattr(llm_mod, "make_engine", lambda c: OneReply(raw, generated))
    actor = LLMActor(cfg.model_dump(), "test/echo_question", "unit", check=check)
    (want,) = actor(pa.table({"text": [ECHO["text"]]})).to_pylist()
    assert want["reject_reason"] == reason

    if isinstance(raw, Exception):  # what Ray's stage writes for a row vLLM failed
        out = {ERR: f"{type(raw).__name__}: {raw}", "generated_text": "", "num_input_tokens": 0,
               "num_generated_tokens": 0, "time_taken_llm": -1}
    else:
        out = {ERR: "", "generated_text": raw, "num_input_tokens": 30, "num_generated_tokens": generated,
               "time_taken_llm": 0.25}
    obj, text, err, cost = vb.from_reply(ECHO, p, check, out, cfg)
    assert err == (json.loads(want["reject_detail"])["error"] if reason else None)
    assert obj == (json.loads(want["llm_output"]) if want["llm_output"] else None)
    assert text == want["llm_raw"]
    if reason == "engine_error":
        assert err == "engine_error: RuntimeError: CUDA error: device-side assert triggered"
        assert cost == Usage(candidates=1)
    else:
        assert cost == Usage(prompt=30, generated=generated, seconds=0.25, candidates=1)


def test_pick_follows_best_of_n():
    ok = ({"q": 1}, "r1", None, Usage(generated=3, candidates=1))
    bad = (None, "r0", "invalid JSON: x", Usage(generated=5, candidates=1))
    obj, raw, err, cost = vb.pick([bad, ok, ok], attempt=1)
    assert (obj, raw, err, cost.tries, cost.candidates, cost.generated) == ({"q": 1}, "r1", None, 5, 3, 11)
    obj, raw, err, cost = vb.pick([bad, bad], attempt=0)
    assert obj is None and raw == "r0" and cost.tries == 2
    assert err == "invalid JSON: x [best of 2; others: invalid JSON: x]"
    assert vb.pick([ok], attempt=2)[3].tries == 3


# ----------------------------------------------------------------------------- passes on Ray
def scripted_stage(script: dict):
    """Ray's vLLM stage with its UDF replaced by :class:`ScriptedVLLMStageUDF` (same stage API)."""
    import ray
    from ray.llm._internal.batch.stages.base import StatefulStage

    return StatefulStage(fn=ScriptedVLLMStageUDF, fn_constructor_kwargs=dict(script=script),
                         map_batches_kwargs=dict(zero_copy_batch=True, compute=ray.data.ActorPoolStrategy(size=1),
                                                 num_cpus=0.5))


def _udf_base():
    from ray.llm._internal.batch.stages.base import StatefulStageUDF

    return StatefulStageUDF


class ScriptedVLLMStageUDF(_udf_base()):
    """THE FAKE: stands in for vLLMEngineStageUDF (vLLM cannot be installed here). It reads the
    request fields that stage reads (``sampling_params``, ``prompt``/``tokenized_prompt``) and writes
    the fields it writes (``generated_text``, token counts, ``prompt_logprobs``, and with
    should_continue_on_error a ``__inference_error__`` message). Generation replies come from
    ``script``: {per-request seed: (reply, temperature)}; a reply starting with ``!`` is an
    engine failure, and a request whose seed or temperature is not scripted fails loudly.
    With ``script["prompt_ends_with"]`` the chat-templated ``prompt`` text must end with it.
    Scoring requests (``prompt_logprobs``) get :meth:`logprob` at every prompt position, or fail
    when their prompt's length is in ``script["fail_lengths"]``."""

    def __init__(self, data_column, expected_input_keys, script):
        super().__init__(data_column, expected_input_keys)
        self.script = script

    @staticmethod
    def logprob(token: int, position: int) -> float:
        return -0.1 * (position % 7 + 1) - token * 1e-5

    async def udf(self, batch):
        for row in batch:
            params = dict(row["sampling_params"])
            ids = [int(t) for t in row["tokenized_prompt"]]
            out = {self.IDX_IN_BATCH_COLUMN: row[self.IDX_IN_BATCH_COLUMN], "prompt": row.get("prompt") or "",
                   "num_input_tokens": len(ids), "generated_text": "", "num_generated_tokens": 0,
                   "prompt_logprobs": None, "time_taken_llm": 0.01, ERR: ""}
            if params.get("prompt_logprobs") is not None:  # teacher-forced scoring
                if len(ids) in self.script.get("fail_lengths", ()):
                    out.update({ERR: "ValueError: scripted scoring failure", "num_input_tokens": 0})
                else:
                    out["prompt_logprobs"] = [None] + [{t: {"logprob": self.logprob(t, i), "rank": 1,
                                                            "decoded_token": None}}
                                                       for i, t in enumerate(ids) if i > 0]
                yield out
                continue
            reply, temperature = self.script.get(int(params["seed"]), ("!KeyError: unscripted seed", None))
            if temperature is not None and abs(float(params["temperature"]) - temperature) > 1e-9:
                reply = f"!AssertionError: temperature {params['temperature']} != {temperature}"
            suffix = self.script.get("prompt_ends_with")
            if suffix is not None and not (row.get("prompt") or "").endswith(suffix):
                reply = f"!AssertionError: the prompt does not end with {suffix!r}"
            if reply.startswith("!"):
                out.update({ERR: reply[1:], "num_input_tokens": 0, "time_taken_llm": -1})
            else:
                out.update(generated_text=reply, num_generated_tokens=len(reply) // 4)
            yield out


GOOD = {"ok": '{"question": "Is the first try fine?"}', "second": '{"question": "Did candidate two work?"}',
        "retry": '{"question": "Did the retry work?"}', "checked": '{"question": "Why is the sky blue?"}'}
BAD = '{"question": "cut'
BOOM = "!RuntimeError: CUDA error: device-side assert triggered"


def run_both(cfg: LLMConfig, plan: dict[str, list[str]], monkeypatch, prefix: str = "", **kw):
    """The rows of ``plan`` ({text: reply of candidate k = attempt * n + j}) through vllm_map with
    the scripted stage and through LLMActor with an engine replying the same, by seed."""
    import ray

    p = prompts.load("test/echo_question")
    n = cfg.best_of or 1
    by_seed: dict = {}
    for text, replies in plan.items():
        msgs = p.messages({"text": text})
        for k, reply in enumerate(replies):
            by_seed[row_seed(cfg.seed + k, msgs)] = (reply, 0.0 if k == 0 else cfg.retry_temperature)
    assert len(by_seed) == sum(len(v) for v in plan.values())
    if prefix:
        by_seed["prompt_ends_with"] = prefix
    # columns named like the processor's own ("prompt", "model") stay the row's
    rows = [{"text": t, "prompt": f"a user column {i}", "model": "upstream"} for i, t in enumerate(plan)]

    ds = vb.vllm_map(ray.data.from_items(rows), llm=cfg, prompt="test/echo_question", stage="unit",
                     check=off_topic, engine_stage=scripted_stage(by_seed), **kw)
    got = pa.concat_tables([ray.get(r) for r in ds.to_arrow_refs()]).sort_by("text")

    class BySeed:  # the same replies, by the seeds LLMActor asks for
        name = cfg.model

        def generate(self, messages, sampling, seeds, schema, prefix_):
            replies = [by_seed[s] for s in seeds]
            if any(r.startswith("!") or abs(t - sampling.temperature) > 1e-9 for r, t in replies):
                raise RuntimeError("CUDA error: device-side assert triggered")
            assert prefix_ == p.response_prefix
            return [prefix + r for r, _ in replies]

    monkeypatch.setattr(llm_mod, "make_engine", lambda c: BySeed())
    want = LLMActor(cfg.model_dump(), "test/echo_question", "unit", check=off_topic)(
        pa.Table.from_pylist(rows)).sort_by("text")
    assert got.column_names == want.column_names
    assert got.schema == want.schema
    same = ["text", "prompt", "llm_output", "llm_raw", "stage", "prompt_id", "model", "seed", "attempts",
            "reject_reason", "reject_detail", "llm_candidates", "llm_tries"]
    assert got.select(same).to_pylist() == want.select(same).to_pylist()
    return {r["text"]: r for r in got.to_pylist()}


@pytest.mark.slow  # Ray Data passes: fresh actor pools on 2 cores
def test_retries_and_best_of_passes_give_the_actors_rows(ray_local, tiny_llm, monkeypatch):
    from transformers import AutoTokenizer

    cfg = vllm_cfg(tiny_llm, best_of=2, max_retries=1, seed=3, retry_temperature=0.8, batch_size=2)
    plan = {"ok": [GOOD["ok"], BAD, BAD, BAD], "second": [BAD, GOOD["second"], BAD, BAD],
            "retry": [BAD, BAD, GOOD["retry"], BAD], "never": [BAD] * 4, "boom": [BOOM] * 4,
            "checked": [GOOD["checked"]] * 4}
    # our own tokenization (one actor pool per pass; Ray's stages are the next test's)
    by = run_both(cfg, plan, monkeypatch, tokens_by="synthrag")
    assert (by["ok"]["llm_tries"], by["ok"]["attempts"], by["ok"]["llm_candidates"]) == (1, 1, 2)
    assert (by["second"]["llm_tries"], by["second"]["seed"]) == (2, 4)
    assert (by["retry"]["attempts"], by["retry"]["llm_tries"], by["retry"]["seed"], by["retry"]["llm_candidates"]) \
        == (2, 3, 5, 4)
    assert json.loads(by["retry"]["llm_output"]) == json.loads(GOOD["retry"])
    assert by["never"]["reject_reason"] == "unparsable_reply" and by["never"]["attempts"] == 2
    assert "best of 2" in json.loads(by["never"]["reject_detail"])["error"]
    assert by["boom"]["reject_reason"] == "engine_error"
    assert "device-side assert" in json.loads(by["boom"]["reject_detail"])["error"]
    assert by["checked"]["reject_reason"] == "off_topic"
    # the engine saw the transformers engine's token ids: counted per candidate
    tok = AutoTokenizer.from_pretrained(tiny_llm)
    ids = vb.prompt_ids(tok, prompts.load("test/echo_question").messages({"text": "ok"}))
    assert by["ok"]["llm_prompt_tokens"] == 2 * len(ids)
    assert by["ok"]["llm_generated_tokens"] == len(GOOD["ok"]) // 4 + len(BAD) // 4


@pytest.mark.slow  # Ray Data passes: fresh actor pools on 2 cores
def test_rays_chat_template_and_tokenize_stages_feed_the_engine(ray_local, tiny_llm, monkeypatch):
    """One pass through Ray's own stages, unguided: the reply start is forced as an assistant
    turn Ray's chat template continues, and put back in front of the reply."""
    from transformers import AutoTokenizer

    p = prompts.load("test/echo_question")
    cfg = vllm_cfg(tiny_llm, best_of=2, max_retries=0, seed=1, guided=False, batch_size=2)
    tail = lambda reply: reply[len(p.response_prefix):]  # noqa: E731 - what the engine writes after the prefix
    plan = {"ok": [tail(GOOD["ok"]), "x"], "second": ["Why?", tail(GOOD["second"])], "boom": [BOOM] * 2}
    by = run_both(cfg, plan, monkeypatch, prefix=p.response_prefix)  # tokens_by auto: Ray's stages here
    assert json.loads(by["ok"]["llm_output"]) == json.loads(GOOD["ok"]) and by["ok"]["llm_raw"] == GOOD["ok"]
    assert by["second"]["llm_tries"] == 2 and by["second"]["reject_reason"] is None
    assert by["boom"]["reject_reason"] == "engine_error"
    # Ray's tokenize stage: the chat template's text (ending in the prefix) with special tokens
    tok = AutoTokenizer.from_pretrained(tiny_llm)
    text = tok.apply_chat_template([*p.messages({"text": "ok"}), {"role": "assistant", "content": p.response_prefix}],
                                   tokenize=False, continue_final_message=True)
    assert text.endswith(p.response_prefix)
    assert by["ok"]["llm_prompt_tokens"] == 2 * len(tok([text])["input_ids"][0])


def test_who_tokenizes(tiny_llm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llm)
    assert vb.ray_doubles_bos(tok) is False  # its template's first token is not added again

    class AddsBos:  # a Llama-3-like tokenizer: the template writes the BOS, the tokenizer adds one too
        bos_token_id = 7

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return "<bos>" + messages[0]["content"]

        def __call__(self, texts, add_special_tokens=True):
            one = lambda t: ([7] if add_special_tokens else []) + [7 if t.startswith("<bos>") else 9, 9]  # noqa: E731
            return {"input_ids": [one(t) for t in texts] if isinstance(texts, list) else one(texts)}

    assert vb.ray_doubles_bos(AddsBos()) is True
    assert vb.prompt_ids(AddsBos(), [{"role": "user", "content": "x"}]) == [7, 9]  # one BOS, as transformers' engine

    p = prompts.load("test/echo_question")
    cfg = vllm_cfg(tiny_llm, guided=False)
    req = vb.to_request(ECHO, p, cfg, 0, tokenizer=tok)
    assert "messages" not in req
    engine = llm_mod.TransformersEngine(cfg.model_copy(update={"engine": "transformers"}))
    assert req["tokenized_prompt"] == engine._prompt_ids(p.messages(ECHO), p.response_prefix)
    guided = vb.to_request(ECHO, p, cfg.model_copy(update={"guided": True}), 0, tokenizer=tok)
    assert guided["tokenized_prompt"] == engine._prompt_ids(p.messages(ECHO), "")
    with pytest.raises(ValueError, match="tokens_by"):
        vb.vllm_map(None, llm=cfg, prompt="test/echo_question", stage="s", tokens_by="vllm")


@pytest.mark.slow  # Ray Data passes: fresh actor pools on 2 cores
def test_scoring_prompts_run_on_prompt_logprobs(ray_local, tiny_llm):
    import ray

    from actors.llm import TransformersEngine

    cfg = vllm_cfg(tiny_llm, batch_size=2)
    mapping = {"likely": "ragsynth/answer_likelihood", "cover": "ragsynth/judge_cover"}
    q = {"question": "What do bees make?", "answer": "Honey."}
    rows = [{"kind": "likely", "context": "Bees make honey.", "criterion": "", **q},
            {"kind": "cover", "context": "", "criterion": "Bees make honey.", **q},  # two continuations
            {"kind": "likely", "context": "Owls hunt at night and sleep through the day.", "criterion": "", **q},
            {"kind": "judge", "context": "", "criterion": "", **q}]  # no such prompt
    # what our requests must hold, from the transformers engine's own tokenization
    tok_engine = TransformersEngine(LLMConfig(engine="transformers", model=str(tiny_llm)))
    spans = []
    for row in rows[:3]:
        p = prompts.load(mapping[row["kind"]])
        ctx = tok_engine._prompt_ids(p.messages(row), "")
        spans.append([(ctx, tok_engine.tok(c, add_special_tokens=False)["input_ids"])
                      for c in p.render_continuations(row)])
    failing = len(spans[2][0][0]) + len(spans[2][0][1])  # the engine fails the third row's request
    assert failing not in {len(c) + len(t) for s in spans[:2] for c, t in s}

    ds = vb.vllm_map(ray.data.from_items(rows), llm=cfg, prompt=mapping, prompt_key="kind", stage="score",
                     engine_stage=scripted_stage({"fail_lengths": [failing]}))
    out = ds.take_all()
    assert len(out) == 4
    by = {(r["kind"], r["context"]): r for r in out}
    for row, span in zip(rows[:2], spans):
        got = by[(row["kind"], row["context"])]
        assert got["reject_reason"] is None, got["reject_detail"]
        reply = json.loads(got["llm_output"])
        assert reply["tokens"] == [len(t) for _, t in span]
        want = [sum(ScriptedVLLMStageUDF.logprob(x, len(c) + j) for j, x in enumerate(t)) for c, t in span]
        assert reply["logprobs"] == pytest.approx(want, abs=1e-9)
        assert (got["attempts"], got["seed"]) == (1, 0)
        assert got["llm_prompt_tokens"] == sum(len(c) + len(t) for c, t in span)
        assert got["prompt_id"] == prompts.load(mapping[row["kind"]]).id
    failed = by[("likely", rows[2]["context"])]
    assert failed["reject_reason"] == "engine_error" and failed["attempts"] == 1  # scoring is never retried
    assert "scripted scoring failure" in failed["reject_detail"]
    unknown = by[("judge", "")]
    assert unknown["reject_reason"] == "unknown_prompt" and "kind='judge'" in unknown["reject_detail"]


def test_llm_map_sends_the_vllm_engine_to_ray_data_llm(ray_local, monkeypatch):
    import ray

    seen = {}
    monkeypatch.setattr(vb, "vllm_map", lambda ds, **kw: seen.setdefault("kw", kw) and "processor")
    ds = ray.data.from_items([{"text": "x"}])
    assert llm_mod.llm_map(ds, llm=LLMConfig(engine="vllm", model="/m"), prompt="test/echo_question",
                           stage="s") == "processor"
    assert seen["kw"]["prompt"] == "test/echo_question" and seen["kw"]["stage"] == "s"
    seen.clear()
    out = llm_mod.llm_map(ds, llm=LLMConfig(engine="vllm", model="/m", vllm_backend="actor"),
                          prompt="test/echo_question", stage="s")
    assert not seen and out is not None  # the actor pool path (lazy: nothing loads here)


# ----------------------------------------------------------------------------- real vLLM
def test_vllm_map_end_to_end_on_vllm(ray_local):
    pytest.importorskip("vllm", reason="vLLM is not installed (GPU hosts only: pip install 'synthrag[gpu]')")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU")
    model = os.environ.get("SYNTHRAG_VLLM_MODEL")
    if not model:
        pytest.skip("set SYNTHRAG_VLLM_MODEL to a local model directory to run vLLM on ray.data.llm")
    import ray

    cfg = LLMConfig(engine="vllm", model=model, batch_size=4, max_model_len=2048, gpu_memory_utilization=0.7)
    rows = [{"text": t} for t in ("Bees make honey.", "Ice melts at zero degrees.", "Owls hunt at night.")]
    out = llm_mod.llm_map(ray.data.from_items(rows), llm=cfg, prompt="test/echo_question", stage="gpu").take_all()
    assert len(out) == 3
    for r in out:
        assert r["reject_reason"] in (None, "schema_violation"), r["reject_detail"]
        assert r["llm_prompt_tokens"] > 0 and r["model"] == model
    assert any(r["reject_reason"] is None and json.loads(r["llm_output"])["question"] for r in out)
