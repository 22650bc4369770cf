"""The LLM actor: parsing, validation, retries and rejects, the engines, and the Ray pool."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pytest

import actors.llm as llm_mod
import prompts
from actors.llm import LLMActor, LLMConfig, ParseError, llm_map, parse_json, parse_reply

# ----------------------------------------------------------------------------- parsing (recorded replies)
RECORDED = {  # replies the embedded model gave during development
    "fenced": 'Sure! ```json\n{"question": "Where is the Eiffel Tower?"}\n```',
    "chatter": 'Here it is: {"question": "What boils at 100 degrees?", "response": "water"} hope it helps',
    "double_brace": '{"clues": [{"fact": "ID elements spread by retroposition.", "sentences": [0]}}, {"fact": "x"',
    "truncated": '{"question": "What is the temperature of',
    "copy": "The Eiffel Tower is in Paris and was built in 1889.",
}


def test_parse_json_tolerates_fences_and_chatter():
    assert parse_json(RECORDED["fenced"]) == {"question": "Where is the Eiffel Tower?"}
    assert parse_json(RECORDED["chatter"])["response"] == "water"
    for bad in ("double_brace", "truncated", "copy"):
        with pytest.raises(ParseError):
            parse_json(RECORDED[bad])


def test_parse_reply_validates_schema():
    p = prompts.load("test/echo_question")
    assert parse_reply(p, '{"question": "What is it?"}') == {"question": "What is it?"}
    with pytest.raises(ParseError, match="schema: question"):
        parse_reply(p, '{"question": "Hm"}')  # minLength 5
    with pytest.raises(ParseError, match="schema"):
        parse_reply(p, '{"answer": "no question"}')


def test_prompts_render_strictly():
    p = prompts.load("test/echo_question")
    msgs = p.messages({"text": "Rivers flow."})
    assert msgs[-1]["role"] == "user" and "Rivers flow." in msgs[-1]["content"]
    with pytest.raises(Exception):
        p.messages({})  # a missing variable is an error, not an empty string


def test_a_prompt_variant_replaces_only_its_fields(tmp_path):
    """A file's ``variants`` swap the wording for a model family; lineage names the variant; the
    embedded model picks ``small`` under ``llm.prompt_variant: auto``, any other model the default."""
    f = tmp_path / "p.yaml"
    f.write_text("id: t/p@1\nuser: 'Long instructions about {{ text }}'\n"
                 "schema: {type: object, properties: {q: {type: string}}, required: [q]}\n"
                 "sampling: {temperature: 0.0, max_tokens: 50}\n"
                 "variants:\n  small:\n    user: 'Short: {{ text }}'\n    sampling: {max_tokens: 20}\n")
    base, small = prompts.load(str(f)), prompts.load(str(f), variant="small")
    assert base.id == "t/p@1" and small.id == "t/p@1+small"
    assert small.messages({"text": "x"})[-1]["content"] == "Short: x" and small.schema == base.schema
    assert small.sampling.max_tokens == 20 and base.sampling.max_tokens == 50
    assert prompts.load(str(f), variant="large") is base  # a file without that variant: its default
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: t/b@1\nuser: u\nvariants:\n  small: {usr: typo}\n")
    with pytest.raises(Exception, match="usr"):
        prompts.load(str(bad))
    assert LLMConfig().variant == "small" and LLMConfig(prompt_variant="default").variant is None
    assert LLMConfig(engine="transformers", model="/models/qwen-7b").variant is None
    assert LLMConfig(engine="transformers", model="/models/qwen-0.5b", prompt_variant="small").small


def test_config_is_validated_at_the_edge():
    with pytest.raises(ValueError, match="base_url"):
        LLMConfig(engine="openai")
    with pytest.raises(ValueError):
        LLMConfig(concurrency=(3, 1))
    with pytest.raises(ValueError):
        LLMConfig(nonsense=1)


# ----------------------------------------------------------------------------- retries and rejects
class ReplayEngine:
    """Plays back recorded replies in order, per row, to test the actor's retry logic."""

    name = "replay"

    def __init__(self, script: dict[str, list[str]]):
        self.script = {k: list(v) for k, v in script.items()}
        self.calls = 0

    def generate(self, messages, sampling, seeds, schema, prefix):
        self.calls += 1
        return [self.script[m[-1]["content"].split("Text: ")[-1]].pop(0) for m in messages]


def test_actor_retries_then_rejects_with_raw_text(monkeypatch):
    engine = ReplayEngine({
        "ok": ['{"question": "Is the first try fine?"}'],
        "second": [RECORDED["copy"], '{"question": "Did the retry work?"}'],
        "never": [RECORDED["truncated"], RECORDED["copy"], RECORDED["double_brace"]],
    })
    monkeypatch.setattr(llm_mod, "make_engine", lambda cfg: engine)
    actor = LLMActor(LLMConfig(max_retries=2, seed=7).model_dump(), "test/echo_question", "unit")
    out = actor(pa.table({"text": ["ok", "second", "never"]})).to_pylist()
    assert [r["attempts"] for r in out] == [1, 2, 3]
    assert json.loads(out[0]["llm_output"]) == {"question": "Is the first try fine?"}
    assert json.loads(out[1]["llm_output"])["question"] == "Did the retry work?"
    assert out[1]["seed"] == 8  # a retry uses the next seed
    assert out[2]["llm_output"] is None and out[2]["reject_reason"] == "unparsable_reply"
    assert json.loads(out[2]["reject_detail"])["raw"] == RECORDED["double_brace"]
    for r in out:
        assert (r["stage"], r["prompt_id"], r["model"]) == ("unit", "test/echo_question@2", "replay")


def test_actor_check_failures_are_retried_and_named(monkeypatch):
    engine = ReplayEngine({"a": ['{"question": "Why is the sky blue?"}'] * 3})
    monkeypatch.setattr(llm_mod, "make_engine", lambda cfg: engine)
    actor = LLMActor(LLMConfig(max_retries=2).model_dump(), "test/echo_question", "unit",
                     check=lambda row, reply: "off_topic: no" if "sky" in reply["question"] else None)
    (row,) = actor(pa.table({"text": ["a"]})).to_pylist()
    assert row["reject_reason"] == "off_topic" and row["attempts"] == 3


def test_best_of_n_keeps_the_first_candidate_that_passes_and_records_its_index(monkeypatch):
    class Recording(ReplayEngine):
        def generate(self, messages, sampling, seeds, schema, prefix):
            self.log.append((sampling.temperature, list(seeds)))
            return super().generate(messages, sampling, seeds, schema, prefix)

    good, bad = '{"question": "Is this one fine?"}', RECORDED["copy"]
    engine = Recording({"first": [good, bad, bad], "third": [bad, bad, good], "none": [bad, bad, bad]})
    engine.log = []
    monkeypatch.setattr(llm_mod, "make_engine", lambda cfg: engine)
    actor = LLMActor(LLMConfig(best_of=3, max_retries=0, seed=10, retry_temperature=0.9).model_dump(),
                     "test/echo_question", "unit")
    out = {r["text"]: r for r in actor(pa.table({"text": ["first", "third", "none"]})).to_pylist()}
    # one greedy call for candidate 1 of every row, one sampled call for candidates 2..3
    msgs = {t: actor.prompt.messages({"text": t}) for t in ("first", "third", "none")}
    seeds = [[llm_mod.row_seed(s, m) for m in msgs.values()] for s in (10, 11, 12)]  # the seed mixed with the row
    assert engine.log == [(0.0, seeds[0]), (0.9, [x for pair in zip(seeds[1], seeds[2]) for x in pair])]
    assert (out["first"]["llm_tries"], out["first"]["seed"]) == (1, 10)
    assert (out["third"]["llm_tries"], out["third"]["seed"]) == (3, 12)
    assert json.loads(out["third"]["llm_output"]) == {"question": "Is this one fine?"}
    assert all(r["llm_candidates"] == 3 and r["attempts"] == 1 for r in out.values())
    none = out["none"]
    assert none["reject_reason"] == "unparsable_reply" and none["llm_tries"] == 3
    assert "best of 3" in json.loads(none["reject_detail"])["error"]


def test_actor_survives_engine_crash_per_row(monkeypatch):
    class Flaky(ReplayEngine):
        def generate(self, messages, sampling, seeds, schema, prefix):
            if any("boom" in m[-1]["content"] for m in messages):
                raise RuntimeError("CUDA error: device-side assert")
            return super().generate(messages, sampling, seeds, schema, prefix)

    engine = Flaky({"fine": ['{"question": "Is this row fine?"}']})
    monkeypatch.setattr(llm_mod, "make_engine", lambda cfg: engine)
    actor = LLMActor(LLMConfig(max_retries=0).model_dump(), "test/echo_question", "unit")
    out = actor(pa.table({"text": ["fine", "boom"]})).to_pylist()
    assert out[0]["reject_reason"] is None
    assert out[1]["reject_reason"] == "engine_error" and "device-side" in out[1]["reject_detail"]


# ----------------------------------------------------------------------------- real engines
@pytest.fixture(scope="module")
def embedded_engine():
    return llm_mod.TransformersEngine(LLMConfig(num_cpus=2))


@pytest.mark.slow
def test_embedded_engine_generates_valid_json_under_grammar(embedded_engine):
    p = prompts.load("test/echo_question")
    texts = ["The Eiffel Tower is in Paris.", "Water boils at 100 degrees Celsius at sea level."]
    raws = embedded_engine.generate([p.messages({"text": t}) for t in texts], p.sampling, [0, 0], p.schema,
                                    p.response_prefix)
    for raw in raws:
        parse_reply(p, raw)  # guided decoding: the reply follows the schema
    assert embedded_engine.guided


@pytest.mark.slow
def test_embedded_engine_choice_logprobs_are_teacher_forced(embedded_engine):
    msgs = [[{"role": "user", "content": "Is Paris the capital of France? Answer yes or no."}]]
    (yes, no, long), = embedded_engine.choice_logprobs(msgs, ["yes", "no", "yes it is the capital of France"])
    assert yes < 0 and no < 0
    assert long < yes  # more tokens to predict: lower joint probability


@pytest.mark.slow
def test_scoring_prompt_through_the_actor(embedded_engine, monkeypatch):
    """A scoring prompt (``continuations``) returns teacher-forced log-probs per row: the same
    numbers as the engine's, batched or not, and a context that holds the answer makes it likelier."""
    monkeypatch.setattr(llm_mod, "make_engine", lambda cfg: embedded_engine)
    actor = LLMActor(LLMConfig(max_retries=2).model_dump(), "ragsynth/answer_likelihood", "unit")
    answer = "Marta Kowalczyk was born in Elblag."
    rows = [{"context": ctx, "question": "Where was Marta Kowalczyk born?", "answer": answer}
            for ctx in ("Marta Kowalczyk was born in 1958 in Elblag.", "Cats purr when they are content.")]
    out = actor(pa.Table.from_pylist(rows)).to_pylist()
    replies = [json.loads(r["llm_output"]) for r in out]
    assert all(r["attempts"] == 1 and r["reject_reason"] is None for r in out)
    n = len(embedded_engine.tok(answer, add_special_tokens=False)["input_ids"])
    assert replies[0]["tokens"] == replies[1]["tokens"] == [n]
    assert replies[0]["logprobs"][0] > replies[1]["logprobs"][0]  # the evidence makes the answer likelier
    p = prompts.load("ragsynth/answer_likelihood")
    alone = embedded_engine.score([p.messages(rows[1])], [[answer]])[0][0][0]
    assert alone == pytest.approx(replies[1]["logprobs"][0], abs=1e-3)  # batching does not change scores


class _OpenAIHandler(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible server (the real wire protocol) backed by the real
    embedded model, standing in for vLLM serve / TGI, which cannot run here."""

    engine = None
    seen_auth: list = []

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen_auth.append(self.headers.get("Authorization"))
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        from prompts import Sampling

        schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema")
        sampling = Sampling(temperature=body.get("temperature", 0.0), max_tokens=body.get("max_tokens", 64))
        usage = None
        if body.get("logprobs"):
            lp = self.engine.choice_logprobs([body["messages"]], ["yes", "no"])[0]
            choice = {"index": 0, "message": {"role": "assistant", "content": "yes"},
                      "logprobs": {"content": [{"token": "yes", "logprob": lp[0], "top_logprobs": [
                          {"token": "yes", "logprob": lp[0]}, {"token": "no", "logprob": lp[1]}]}]}}
        else:
            text = self.engine.generate([body["messages"]], sampling, [body.get("seed", 0)], schema, "")[0]
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            u = self.engine.last_usage[0]
            usage = {"prompt_tokens": u.prompt, "completion_tokens": u.generated,
                     "total_tokens": u.prompt + u.generated, "prompt_tokens_details": {"cached_tokens": u.cached}}
        out = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"], "choices": [choice],
                          **({"usage": usage} if usage else {})}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.mark.slow
def test_openai_engine_over_http(embedded_engine, monkeypatch):
    _OpenAIHandler.engine = embedded_engine
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OpenAIHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("SYNTHRAG_TEST_KEY", "sk-test")
        cfg = LLMConfig(engine="openai", model="smol", base_url=f"http://127.0.0.1:{server.server_port}/v1",
                        api_key_env="SYNTHRAG_TEST_KEY", max_retries=1)
        actor = LLMActor(cfg.model_dump(), "test/echo_question", "unit")
        out = actor(pa.table({"text": ["Bees make honey from nectar."]})).to_pylist()
        assert out[0]["reject_reason"] is None, out[0]["reject_detail"]
        assert len(json.loads(out[0]["llm_output"])["question"]) >= 5
        assert out[0]["model"] == "smol"
        # the server's usage block reaches the row's cost columns
        assert out[0]["llm_prompt_tokens"] > 20 and out[0]["llm_generated_tokens"] > 3
        assert out[0]["llm_seconds"] > 0
        assert _OpenAIHandler.seen_auth[-1] == "Bearer sk-test"
        (yes, no), = actor.engine.choice_logprobs([[{"role": "user", "content": "Say yes."}]], ["yes", "no"])
        assert yes <= 0 and no <= 0
    finally:
        server.shutdown()


def test_vllm_engine_needs_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError:
        pytest.skip("vllm is not installed (GPU clusters only: pip install 'synthrag[gpu]')")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU")
    import os

    model = os.environ.get("SYNTHRAG_VLLM_MODEL")
    if not model:
        pytest.skip("set SYNTHRAG_VLLM_MODEL to a local model directory to run the vLLM engine test")
    eng = llm_mod.VLLMEngine(LLMConfig(engine="vllm", model=model, num_gpus=1))
    p = prompts.load("test/echo_question")
    raws = eng.generate([p.messages({"text": "Bees make honey."})] * 4, p.sampling, [0, 1, 2, 3], p.schema, "")
    for raw in raws:
        parse_reply(p, raw)


# ----------------------------------------------------------------------------- on Ray Data
@pytest.mark.slow
def test_llm_map_on_an_actor_pool(ray_local, tiny_llm):
    import ray

    rows = [{"text": t} for t in ["Bees make honey.", "Ice melts at zero degrees.", "Owls hunt at night."]]
    llm = LLMConfig(engine="transformers", model=str(tiny_llm), batch_size=2, max_retries=1, num_cpus=1)
    ds = llm_map(ray.data.from_items(rows), llm=llm, prompt="test/echo_question",
                 stage="pool", check=lambda row, reply: "always_bad: test" if row["text"].startswith("Owls") else None)
    out = sorted(ds.take_all(), key=lambda r: r["text"])
    assert len(out) == 3
    by = {r["text"]: r for r in out}
    assert by["Owls hunt at night."]["reject_reason"] == "always_bad"
    assert by["Owls hunt at night."]["attempts"] == 2
    for t in ("Bees make honey.", "Ice melts at zero degrees."):
        assert by[t]["reject_reason"] is None, by[t]["reject_detail"]
        assert json.loads(by[t]["llm_output"])["question"]
        assert by[t]["model"] == str(tiny_llm) and by[t]["prompt_id"] == "test/echo_question@2"


def test_a_reply_cut_by_the_token_budget_is_truncated_not_unparsable(tiny_llm):
    """Under guided decoding a reply that does not parse was cut off: it is named ``truncated``
    (with the budget), and the row's cost columns count what was spent on every attempt."""
    llm = LLMConfig(engine="transformers", model=str(tiny_llm), max_retries=1, max_tokens=4, num_cpus=1)
    actor = LLMActor(llm.model_dump(), "test/echo_question", "unit")
    assert actor.engine.guided
    (row,) = actor(pa.table({"text": ["Bees make honey from nectar."]})).to_pylist()
    assert row["reject_reason"] == "truncated" and row["attempts"] == 2
    assert "all 4 tokens" in json.loads(row["reject_detail"])["error"]
    assert row["llm_generated_tokens"] == 2 * 4
    prompt_tokens = len(actor.engine._prompt_ids(actor.prompt.messages({"text": "Bees make honey from nectar."}), ""))
    assert row["llm_prompt_tokens"] == 2 * prompt_tokens and row["llm_seconds"] > 0


def test_sampled_replies_depend_on_each_rows_seed_not_on_its_batch(tiny_llm):
    """Ray Data cuts blocks differently from run to run: a row sampled alone, in a batch, or
    through the stock path (no prefix cache) gets the same reply for the same seed; another
    seed draws another reply; top-p so small that one token survives is greedy decoding."""
    from prompts import Sampling

    engines = [llm_mod.TransformersEngine(LLMConfig(engine="transformers", model=str(tiny_llm), num_cpus=1,
                                                    prefix_cache=n)) for n in (4, 0)]
    msgs = [[{"role": "user", "content": t}] for t in ["Bees make honey.", "Owls hunt at night.", "Ice melts."]]
    hot = Sampling(temperature=1.0, top_p=0.95, max_tokens=12)

    def seeds(seed):
        return [llm_mod.row_seed(seed, m) for m in msgs]

    batched = engines[0].generate(msgs, hot, seeds(7), None, "")
    assert len(set(batched)) == 3  # rows under one seed still draw independently
    assert [engines[0].generate([m], hot, [s], None, "")[0] for m, s in zip(msgs, seeds(7))] == batched
    assert engines[1].generate(msgs[::-1], hot, seeds(7)[::-1], None, "") == batched[::-1]
    assert engines[0].generate(msgs, hot, seeds(8), None, "") != batched
    greedy = engines[0].generate(msgs, Sampling(temperature=0.0, max_tokens=12), [0, 0, 0], None, "")
    assert engines[0].generate(msgs, Sampling(temperature=1.0, top_p=1e-6, max_tokens=12), [3, 4, 5], None, "") == greedy


def test_llm_stage_accounts_for_best_of_n(ray_local, tiny_llm, tmp_path):
    """Through the stage helper on a real (tiny) model: a check that refuses the greedy reply
    makes every kept row take candidate 2; the manifest counts candidates and the tries."""
    from pipelines.core.run import Run
    from pipelines.registry import load_config
    from pipelines.stages.stage import llm_stage, ray_from_arrow

    texts = ["Bees make honey.", "Ice melts at zero degrees.", "Owls hunt at night."]
    sets = ["llm.engine=transformers", f"llm.model={tiny_llm}", "llm.max_retries=0", "llm.num_cpus=1"]
    greedy_actor = LLMActor(load_config(None, sets).llm.model_dump(), "test/echo_question", "unit")
    greedy = {r["text"]: json.loads(r["llm_output"])["question"]
              for r in greedy_actor(pa.table({"text": texts})).to_pylist()}

    def check(row, reply):
        if row["text"].startswith("Owls"):
            return "always_bad: test"
        return "greedy: refused" if reply["question"] == greedy[row["text"]] else None

    cfg = load_config(None, [*sets, "llm.best_of=2"])
    run = Run.open(tmp_path / "run", command="test", config={})
    rows = pa.table({"key": ["a", "b", "c"], "text": texts})
    llm_stage(run, cfg, "unit", [], lambda: ray_from_arrow(rows), "key", "test/echo_question", "unit_out", check=check)
    (st,) = run.manifest["stages"]
    assert st["in"] == 3 == st["out"] + sum(st["rejected"].values()) and st["rejected"] == {"always_bad": 1}
    assert st["llm"]["candidates"] == 6 and st["llm"]["calls"] == 3
    assert st["llm"]["tries"] == {"2": 2}
    kept = run.read_arrow("unit_out").to_pylist()
    assert all(json.loads(r["llm_output"])["question"] != greedy[r["text"]] for r in kept)


@pytest.mark.slow
def test_stages_in_a_warm_scope_share_one_server_and_agree_with_a_fresh_pool(ray_local, tiny_llm, tmp_path):
    """Inside ``llm_pool.warm()`` two LLM maps are served by the same process (the model is
    loaded once), their replies equal a per-stage actor pool's, and the scope's end frees it."""
    import ray

    from actors import llm_pool

    rows = [{"text": t} for t in ["Bees make honey.", "Ice melts at zero degrees.", "Owls hunt at night."]]
    llm = LLMConfig(engine="transformers", model=str(tiny_llm), batch_size=2, max_retries=0, num_cpus=1)
    pids = tmp_path / "pids"
    pids.mkdir()

    def check(row, reply):
        (pids / str(os.getpid())).touch()
        return None

    def replies():
        ds = llm_map(ray.data.from_items(rows), llm=llm, prompt="test/echo_question", stage="s", check=check, rows=3)
        return {r["text"]: r["llm_output"] for r in ds.take_all()}

    cold = replies()
    cold_pids = set(os.listdir(pids))
    for p in cold_pids:
        (pids / p).unlink()
    with llm_pool.warm() as pool:
        first, second = replies(), replies()
        (servers,) = pool.servers.values()
        assert len(servers) == 1  # 3 rows in batches of 2 would want 2; llm.concurrency caps it at 1
        warm_pids = set(os.listdir(pids))
    assert first == second == cold and all(json.loads(v)["question"] for v in cold.values())
    assert len(warm_pids) == 1 and warm_pids.isdisjoint(cold_pids)
    assert not pool.servers  # released with the scope
    assert llm_pool.active() is None


def test_a_rows_own_schema_replaces_the_prompts(tiny_llm):
    """A row with an ``llm_schema`` column is decoded under and validated against that schema
    (one grammar per task in a stage that mixes tasks); rows without one keep the file's."""
    llm = LLMConfig(engine="transformers", model=str(tiny_llm), max_retries=0, num_cpus=1)
    actor = LLMActor(llm.model_dump(), "test/echo_question", "unit")
    only = {"type": "object", "properties": {"question": {"type": "string", "enum": ["Who?", "Why not?"]}},
            "required": ["question"]}
    rows = actor(pa.table({"text": ["Bees make honey.", "Owls hunt at night.", "Ice melts."],
                           "llm_schema": [json.dumps(only), None, json.dumps(only)]})).to_pylist()
    for r in (rows[0], rows[2]):
        assert r["reject_reason"] is None, r["reject_detail"]
        assert json.loads(r["llm_output"])["question"] in {"Who?", "Why not?"}
    assert rows[1]["reject_reason"] is None, rows[1]["reject_detail"]
    assert 5 <= len(json.loads(rows[1]["llm_output"])["question"]) <= 40
    # the row's schema is the one replies are validated against
    p = llm_mod.row_prompt(actor.prompt, {"llm_schema": json.dumps(only)})
    assert p.schema == only and p.id == actor.prompt.id and actor.prompt.schema != only
    with pytest.raises(ParseError, match="schema"):
        parse_reply(p, '{"question": "What?"}')
