"""Shared-prefix reuse (actors/prefix_cache.py) changes the cost of a prompt, never its reply.

The engines here run in fp32: reuse is exact arithmetic, and only the order of floating-point
reductions changes; in bf16 (``llm.dtype: bf16``) those differences are at bf16's rounding,
large enough to flip a near-tie, so equality is pinned where it is meaningful."""

from __future__ import annotations

import pytest

import prompts
from actors.llm import LLMConfig, TransformersEngine
from actors.prefix_cache import (
    GrowingLayer,
    PrefixCache,
    common_prefix,
    forward_batch,
    forward_rows,
)
from actors.teacher import continuation_logprobs, next_token_logprobs

PASSAGES = [
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "Honey bees communicate the location of flowers with a waggle dance.",
    "Insulin is a hormone made by the pancreas that lowers blood sugar.",
    "The Danube flows through ten countries before reaching the Black Sea.",
]


def test_common_prefix():
    assert common_prefix([[1, 2, 3], [1, 2, 4], [1, 2]], limit=10) == 2
    assert common_prefix([[1, 2, 3], [1, 2, 3]], limit=2) == 2
    assert common_prefix([[5], [6]], limit=10) == 0
    assert common_prefix([[1, 2, 3]], limit=-1) == 0


def test_a_growing_layer_holds_what_concatenation_would():
    import torch

    layer, parts = GrowingLayer(room=2), []
    for m in (3, 1, 1, 1, 4):  # fills its room, doubles, keeps every earlier state
        k, v = torch.randn(2, 3, m, 4), torch.randn(2, 3, m, 4)
        parts.append((k, v))
        keys, values = layer.update(k, v)
    assert torch.equal(keys, torch.cat([k for k, _ in parts], dim=2))
    assert torch.equal(values, torch.cat([v for _, v in parts], dim=2))
    assert layer.get_seq_length() == 10 and layer._k.shape[2] >= 10


@pytest.fixture(scope="module")
def tiny(tiny_llm):
    return TransformersEngine(LLMConfig(engine="transformers", model=str(tiny_llm), num_cpus=2, dtype="fp32"))


def test_a_shared_prefix_is_computed_once_then_reused_and_the_oldest_dropped(tiny):
    cache = PrefixCache(tiny.model, entries=2, min_tokens=4)
    head = list(range(10, 30))
    a = cache.find([head + [1, 2], head + [3, 4, 5]], reserve=[1, 1])
    assert (a.length, a.reused) == (20, False)
    # a later batch, even of one row, that starts with the stored prefix reuses it
    b = cache.find([head + [7, 8, 9]], reserve=[1])
    assert (b.length, b.reused) == (20, True) and b.states is a.states
    # each row keeps its reserved own positions: the prefix stops before them
    assert cache.find([head, head], reserve=[3, 3]).length == 17
    # a lone row with nothing stored is not worth keeping; short shared heads are not either
    assert cache.find([[99] * 30], reserve=[1]).length == 0
    assert cache.find([[7, 7, 1], [7, 7, 2]], reserve=[1, 1]).length == 0
    # head[:17] was stored last; a third entry drops the least recently used, head
    cache.find([[40] * 10 + [1], [40] * 10 + [2]], reserve=[1, 1])
    assert list(cache._store) == [tuple(head[:17]), (40,) * 10]


def test_rows_and_batch_forwards_match_the_plain_forward(tiny):
    """Per-row (CPU) and padded-batch (GPU) prefills over a cached prefix give the logits of one
    plain forward pass over each whole sequence."""
    torch = tiny.torch
    head = list(range(100, 140))
    seqs = [head + [5, 6, 7], head + [8] * 9, head + [9]]
    shared = PrefixCache(tiny.model, entries=4, min_tokens=8).find(seqs, reserve=[2, 2, 2])
    assert shared.length == 39
    rows = forward_rows(tiny.model, seqs, shared, keep=[2, 2, 2])
    batch = forward_batch(tiny.model, seqs, shared, keep=2, pad=0)
    with torch.inference_mode():
        for i, s in enumerate(seqs):
            plain = tiny.model(input_ids=torch.tensor([s])).logits[0, -2:]
            assert torch.allclose(rows[i][0], plain, atol=1e-4)
            assert torch.allclose(batch[i], plain, atol=1e-4)
            assert rows[i][1].get_seq_length() == len(s)


@pytest.fixture(scope="module")
def engines():
    """The embedded model with reuse (the default) and without."""
    return (TransformersEngine(LLMConfig(num_cpus=2, dtype="fp32")),
            TransformersEngine(LLMConfig(num_cpus=2, dtype="fp32", prefix_cache=0)))


@pytest.mark.slow
@pytest.mark.parametrize("guided", [True, False])
def test_greedy_replies_equal_with_and_without_reuse(engines, guided):
    reuse, plain = engines
    p = prompts.load("querygen/question")
    msgs = [p.messages({"text": t, "examples": []}) for t in PASSAGES]
    sampling = p.sampling.model_copy(update={"temperature": 0.0, "max_tokens": 12})
    schema = p.schema if guided else None
    expected = plain.generate(msgs, sampling, [0] * 4, schema, p.response_prefix)
    for per_row in (True, False):  # the CPU path, and the padded-batch path GPUs take
        reuse.per_row = per_row
        for lo in (0, 2):  # the second batch reuses the first one's prefix
            got = reuse.generate(msgs[lo:lo + 2], sampling, [0] * 2, schema, p.response_prefix)
            assert got == expected[lo:lo + 2]
        assert all(u.cached > 0 for u in reuse.last_usage)
    reuse.per_row = True
    assert [u.prompt for u in reuse.last_usage] == [u.prompt for u in plain.last_usage[2:]]
    assert all(u.cached == 0 for u in plain.last_usage)
    assert all(0 < u.generated <= 12 for u in reuse.last_usage)


@pytest.mark.slow
def test_best_of_n_candidates_prefill_their_shared_prompt_once(engines):
    """Candidates of one row (same prompt, own seeds) are prefilled once: a repeat counts its
    whole prompt as cached, and each candidate still draws its own reply, as it would alone."""
    from prompts import Sampling

    reuse, plain = engines
    p = prompts.load("querygen/question")
    a, b = (p.messages({"text": t, "examples": []}) for t in PASSAGES[:2])
    hot = Sampling(temperature=1.0, top_p=0.95, max_tokens=10)
    seeds = [1, 2, 3, 1]
    got = reuse.generate([a, a, b, b], hot, seeds, None, "")
    assert [u.cached == u.prompt - 1 for u in reuse.last_usage] == [False, True, False, True]
    assert got == [plain.generate([m], hot, [s], None, "")[0] for m, s in zip([a, a, b, b], seeds)]


@pytest.mark.slow
def test_scores_equal_with_and_without_reuse(engines):
    reuse, plain = engines
    p = prompts.load("teacher/relevance")
    msgs = [p.messages({"query": "what lowers blood sugar", "passage": t}) for t in PASSAGES]
    conts = [["yes", "no", "Insulin lowers it."]] * 4
    want = plain.score(msgs, conts)
    got = reuse.score(msgs, conts)
    assert sum(u.cached for u in reuse.last_usage) > 0
    for a, b in zip(want, got):
        assert [n for _, n in a] == [n for _, n in b]
        assert [lp for lp, _ in b] == pytest.approx([lp for lp, _ in a], abs=1e-3)
    ids = [reuse.tok(c, add_special_tokens=False)["input_ids"][0] for c in ("yes", "no")]
    for a, b in zip(next_token_logprobs(plain, msgs, ids), next_token_logprobs(reuse, msgs, ids)):
        assert b == pytest.approx(a, abs=1e-3)
    qs = ["insulin", "what is the danube", "bees", "tower"]
    for a, b in zip(continuation_logprobs(plain, msgs, qs), continuation_logprobs(reuse, msgs, qs)):
        assert b == pytest.approx(a, abs=1e-3)
