"""The relevance teacher: both backends in-process, and the Ray Serve deployment over HTTP,
through a DeploymentHandle and from the ``synthrag serve teacher`` command."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from actors.teacher import (
    RequestTooLarge,
    Teacher,
    TeacherConfig,
    detect_backend,
    next_token_logprobs,
    p_first,
    score_many,
    score_pairs,
)

pytestmark = pytest.mark.slow

TOKEN = "s3cret-teacher-token"

# Easy cases: one relevant passage, two unrelated ones.
CASES = [
    ("what is the capital of france", ["Paris is the capital and largest city of France.",
                                       "The mitochondria is the powerhouse of the cell.",
                                       "Bananas are rich in potassium."]),
    ("how do vaccines work", ["Vaccines train the immune system to recognise a pathogen by exposing it to an antigen.",
                              "The Eiffel Tower was completed in 1889.",
                              "Stock markets fell sharply on Monday."]),
    ("symptoms of diabetes", ["Common symptoms of diabetes include increased thirst, frequent urination and fatigue.",
                              "The football match ended in a draw.",
                              "Python is a programming language."]),
    ("who wrote hamlet", ["Hamlet is a tragedy written by William Shakespeare around 1600.",
                          "Mount Everest is the highest mountain on Earth.",
                          "Coffee contains caffeine."]),
    ("boiling point of water", ["Water boils at 100 degrees Celsius at sea level.",
                                "The Roman Empire fell in 476 AD.",
                                "Dogs are loyal pets."]),
    ("how many legs does a spider have", ["Spiders have eight legs and two body segments.",
                                          "The stock price of Apple rose today.",
                                          "Paris hosts many museums."]),
    ("what causes rain", ["Rain forms when water vapour in clouds condenses into droplets heavy enough to fall.",
                          "The violin has four strings.",
                          "Chess is played on a board of 64 squares."]),
    ("when did world war 2 end", ["World War II ended in 1945 with the surrender of Germany and Japan.",
                                  "Photosynthesis converts light into chemical energy.",
                                  "Cats sleep for most of the day."]),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float = 180.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            r = requests.get(f"{url}/health", timeout=5)
            if r.status_code == 200:
                return r.json()
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"teacher at {url} not healthy after {timeout} s")


# ----------------------------------------------------------------------------- in-process
@pytest.fixture(scope="module")
def judge() -> Teacher:
    return Teacher(TeacherConfig(model="embedded", judge="yes-no", max_batch_size=24))


def test_judge_fast_path_equals_engine_logprobs(judge):
    """The one-pass next-token log-probs equal the engine's teacher-forced choice log-probs."""
    impl = judge.impl
    assert impl.choices == ["yes", "no"] and impl._fast_ids is not None
    msgs = [impl.prompt.messages({"query": q, "passage": p}) for q, ps in CASES[:2] for p in ps]
    slow = impl.engine.choice_logprobs(msgs, impl.choices)
    fast = next_token_logprobs(impl.engine, msgs, impl._fast_ids)  # padded batch of 6 lengths
    assert len({len(m[0]["content"]) for m in msgs}) > 1
    for a, b in zip(slow, fast):
        assert b == pytest.approx(a, abs=1e-3)


def test_judge_scores_are_probabilities_and_rank_easy_cases(judge):
    pairs = [(q, p) for q, ps in CASES for p in ps]
    scores = judge.score_batch(pairs)
    assert len(scores) == len(pairs) and all(0.0 <= s <= 1.0 for s in scores)
    # Same pair alone or inside a padded batch: same score (batching does not change results).
    assert judge.score(*CASES[0][:1], CASES[0][1][:1])[0] == pytest.approx(scores[0], abs=1e-3)
    # SmolLM2-135M is a weak judge: on these easy cases it orders about 3 in 4 (relevant,
    # unrelated) pairs right, not all. Assert clearly better than chance (8/16), and that the
    # relevant passages score higher on average than the unrelated ones.
    wins, rel, unrel = 0, [], []
    for i in range(len(CASES)):
        r = scores[3 * i: 3 * i + 3]
        wins += (r[0] > r[1]) + (r[0] > r[2])
        rel.append(r[0])
        unrel += r[1:]
    assert wins >= 11, f"judge ordered only {wins}/16 (relevant, unrelated) pairs right"
    assert sum(rel) / len(rel) > sum(unrel) / len(unrel) + 0.02


def test_limits_and_p_first(judge):
    with pytest.raises(RequestTooLarge, match="too many passages"):
        judge.check("q", ["p"] * (judge.cfg.max_passages + 1))
    with pytest.raises(RequestTooLarge, match="passage 1 too long"):
        judge.check("q", ["ok", "x" * (judge.cfg.max_passage_chars + 1)])
    assert p_first([0.0, 0.0]) == pytest.approx(0.5)
    assert p_first([-1.0, -3.0]) == pytest.approx(1 / (1 + pow(2.718281828459045, -2.0)))
    assert p_first([float("-inf"), float("-inf")]) == 0.5


def test_cross_encoder_backend_from_local_dir(tmp_path):
    """A tiny CrossEncoder (random weights, MiniLM tokenizer) saved to disk and loaded by path:
    proves the code path and the backend detection; its scores mean nothing."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from actors.models import embedded_embedder_dir

    tok = AutoTokenizer.from_pretrained(embedded_embedder_dir())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512, num_labels=1)
    out = tmp_path / "tiny-ce"
    BertForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)

    assert detect_backend(str(out)) == "cross-encoder"
    assert detect_backend("embedded") == "llm-judge"
    with pytest.raises(ValueError, match="not 'embedded' nor a local model directory"):
        detect_backend(str(tmp_path / "missing"))

    t = Teacher(TeacherConfig(model=str(out), max_batch_size=2))
    assert t.backend == "cross-encoder"
    passages = ["a short passage", "another, somewhat longer passage about something", "third"]
    scores = t.score("a query", passages)
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)  # one label -> sigmoid
    # Batches of 2 give the same scores as one pair at a time.
    assert scores == pytest.approx([t.score("a query", [p])[0] for p in passages], abs=1e-5)


# ----------------------------------------------------------------------------- CLI
def test_cli_serves_until_sigint(ray_local):
    """`synthrag serve teacher` serves HTTP with a token and shuts Serve down on SIGINT."""
    from ray import serve
    from typer.testing import CliRunner

    import pipelines.cli.serve  # noqa: F401  (registers the command)
    from pipelines.cli.app import app
    from pipelines.cli.serve import ServeRunning
    from pipelines.core.config import ConfigError

    bad = CliRunner().invoke(app, ["serve", "teacher", "--judge", "bogus"])
    assert isinstance(bad.exception, ConfigError) and "teacher.judge = 'bogus'" in str(bad.exception)

    # Serve already running on another port (another app's): a clear refusal, not a silent clash.
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    clash = CliRunner().invoke(app, ["serve", "teacher", "--port", str(free_port())])
    assert isinstance(clash.exception, ServeRunning) and "already runs in this cluster" in str(clash.exception)
    serve.shutdown()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    seen: dict = {}

    def client():
        try:
            seen["health"] = wait_healthy(url)
            body = {"query": "who wrote hamlet", "passages": ["Hamlet is by Shakespeare.", "Cats purr."]}
            seen["no_token"] = requests.post(f"{url}/score", json=body, timeout=60).status_code
            r = requests.post(f"{url}/score", json=body, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"})
            seen["ok"] = (r.status_code, r.json())
        finally:
            os.kill(os.getpid(), signal.SIGINT)

    th = threading.Thread(target=client, daemon=True)
    th.start()
    result = CliRunner().invoke(app, ["serve", "teacher", "--model", "embedded", "--port", str(port),
                                      "--token", TOKEN, "--max-replicas", "1"])
    th.join(timeout=60)
    assert result.exit_code == 0, result.output
    assert "teacher stopped" in result.output
    assert seen["health"]["backend"] == "llm-judge"
    assert seen["no_token"] == 401
    status, data = seen["ok"]
    assert status == 200 and len(data["scores"]) == 2
    assert ray_local.is_initialized()  # the session's Ray survives; only Serve was shut down
    with pytest.raises(requests.RequestException):
        requests.get(f"{url}/health", timeout=2)
    serve.shutdown()


# ----------------------------------------------------------------------------- Ray Serve
@pytest.fixture(scope="module")
def served(ray_local):
    from ray import serve

    from actors.teacher import start_teacher

    port = free_port()
    cfg = TeacherConfig(model="embedded", judge="yes-no", port=port, token=TOKEN, max_passages=8, max_passage_chars=500,
                        max_batch_size=16, min_replicas=1, max_replicas=1)
    handle = start_teacher(cfg)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url)
    yield handle, url
    serve.shutdown()


def test_concurrent_http_requests(served):
    """24 requests from 8 threads: every caller gets its own scores back, whatever requests Serve
    batched it with (load figures belong to benchmarks/bench_teacher.py)."""
    _, url = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    passages = [p for _, ps in CASES for p in ps]
    n_requests = 24

    def call(i: int):
        n = 1 + (i % 4 == 0) + (i % 8 == 0)  # 1-3 short passages (33 pairs in all)
        body = {"query": CASES[i % len(CASES)][0], "passages": [passages[(i + k) % len(passages)] for k in range(n)]}
        r = requests.post(f"{url}/score", json=body, headers=auth, timeout=300)
        return n, r.status_code, r.json()

    t0 = time.time()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(n_requests)))
    elapsed = time.time() - t0
    assert [status for _, status, _ in results] == [200] * n_requests
    for n, _, data in results:
        assert len(data["scores"]) == n and all(0.0 <= s <= 1.0 for s in data["scores"])
    print(f"{n_requests} requests, {sum(n for n, _, _ in results)} pairs in {elapsed:.1f} s")


def test_http_scores_match_in_process_order(served, judge):
    """HTTP scores come back in the passages' order and equal in-process scores."""
    _, url = served
    query, ps = CASES[3]
    order = [ps[2], ps[0], ps[1]]
    r = requests.post(f"{url}/score", json={"query": query, "passages": order},
                      headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
    assert r.status_code == 200
    assert r.json()["scores"] == pytest.approx(judge.score(query, order), abs=1e-3)


def test_http_limits_and_auth(served):
    _, url = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = requests.post(f"{url}/score", json={"query": "q", "passages": ["p"] * 9}, headers=auth, timeout=60)
    assert r.status_code == 413 and "too many passages: 9 > max_passages 8" in r.json()["detail"]
    r = requests.post(f"{url}/score", json={"query": "q", "passages": ["ok", "x" * 501]}, headers=auth, timeout=60)
    assert r.status_code == 413 and "passage 1 too long" in r.json()["detail"]
    r = requests.post(f"{url}/score", json={"query": "q"}, headers=auth, timeout=60)
    assert r.status_code == 422  # malformed body
    body = {"query": "q", "passages": ["p"]}
    assert requests.post(f"{url}/score", json=body, timeout=60).status_code == 401
    r = requests.post(f"{url}/score", json=body, headers={"Authorization": "Bearer wrong"}, timeout=60)
    assert r.status_code == 401 and r.json()["detail"] == "missing or wrong bearer token"
    assert requests.get(f"{url}/health", timeout=10).status_code == 200  # health needs no token


def test_handle_api(served, judge):
    handle, _ = served
    query, ps = CASES[0]
    scores = score_pairs(handle, query, ps)
    assert scores == pytest.approx(judge.score(query, ps), abs=1e-3)
    many = score_many(handle, [q for q, _ in CASES[:4]], [ps for _, ps in CASES[:4]])
    assert [len(s) for s in many] == [3, 3, 3, 3]
    assert many[0] == pytest.approx(scores, abs=1e-3)
    with pytest.raises(Exception, match="too many passages"):
        score_pairs(handle, "q", ["p"] * 9)


def test_query_likelihood_judge_is_exact_and_ranks_easy_cases():
    from actors.teacher import continuation_logprobs

    t = Teacher(TeacherConfig(model="embedded", judge="query-likelihood", max_batch_size=24))
    assert t.impl.prompt.id.startswith("teacher/query_likelihood")
    eng = t.impl.engine
    # The batched continuation log-probs sum to the engine's teacher-forced log-prob of the query.
    msgs = [t.impl.prompt.messages({"passage": p}) for p in CASES[0][1][:2]]
    conts = [CASES[0][0], "a much longer query with several more tokens in it"]
    fast = continuation_logprobs(eng, msgs, conts)
    for m, c, row in zip(msgs, conts, fast):
        assert sum(row) == pytest.approx(eng.choice_logprobs([m], [c])[0][0], abs=1e-3)
    # On the easy cases it puts the relevant passage first for every query.
    pairs = [(q, p) for q, ps in CASES for p in ps]
    scores = t.score_batch(pairs)
    assert all(0.0 < s <= 1.0 for s in scores)
    for i in range(len(CASES)):
        r = scores[3 * i: 3 * i + 3]
        assert r[0] > max(r[1:]), (CASES[i][0], r)


def test_rerank_apis_rank_like_score_and_keep_the_limits(served):
    """The TEI (``/rerank``) and Cohere (``/v1/rerank``) rerank calls a RAG framework makes: the
    same scores as ``/score``, best first, ``top_n`` and returned texts on request, and the same
    token, size limits and 422 on a malformed body."""
    _, url = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    query, ps = CASES[3]
    scores = requests.post(f"{url}/score", json={"query": query, "passages": ps}, headers=auth, timeout=120).json()["scores"]
    best_first = sorted(range(len(ps)), key=lambda i: -scores[i])

    tei = requests.post(f"{url}/rerank", json={"query": query, "texts": ps, "return_text": True}, headers=auth,
                        timeout=120)
    assert tei.status_code == 200
    assert [r["index"] for r in tei.json()] == best_first
    assert [r["score"] for r in tei.json()] == pytest.approx([scores[i] for i in best_first], abs=1e-6)
    assert [r["text"] for r in tei.json()] == [ps[i] for i in best_first]

    docs = [ps[0], {"text": ps[1]}, ps[2]]  # Cohere takes strings or {"text": ...}
    co = requests.post(f"{url}/v1/rerank", json={"model": "any", "query": query, "documents": docs, "top_n": 2,
                                                 "return_documents": True}, headers=auth, timeout=120)
    assert co.status_code == 200
    results = co.json()["results"]
    assert [r["index"] for r in results] == best_first[:2]
    assert [r["relevance_score"] for r in results] == pytest.approx([scores[i] for i in best_first[:2]], abs=1e-6)
    assert results[0]["document"] == {"text": ps[best_first[0]]}

    assert requests.post(f"{url}/rerank", json={"query": query, "texts": ps}, timeout=60).status_code == 401
    too_many = requests.post(f"{url}/v1/rerank", json={"query": "q", "documents": ["d"] * 9}, headers=auth, timeout=60)
    assert too_many.status_code == 413 and "too many passages" in too_many.json()["detail"]
    assert requests.post(f"{url}/rerank", json={"query": "q", "documents": ["d"]}, headers=auth,
                         timeout=60).status_code == 422  # TEI takes texts, not documents
