"""Teacher-forced per-token scores (``Engine.score_tokens``) against a step-by-step reference.

The reference runs the whole context + continuation through the model once, unbatched and
unpadded, and reads token j of the continuation from the logits one position before it: the
off-by-one of teacher forcing. The engine must agree on both of its paths (CPU: rows prefilled
one by one; GPU: sorted by length and right-padded per batch, forced here on CPU), with and
without a reused shared prefix, for continuations of different lengths in one call."""

from __future__ import annotations

import pytest

from actors.llm import LLMConfig, TransformersEngine

CONTEXTS = [
    [{"role": "user", "content": "Passage: the Danube flows through ten countries.\nQuestion: how many countries?"}],
    [{"role": "user", "content": "Passage: honey bees dance.\nQuestion: what do bees do?"}],
]
CONTINUATIONS = [["ten countries", "Ten"], ["they dance to show where the flowers are", "x"]]


def reference(engine: TransformersEngine, messages, continuation: str) -> tuple[list[float], list[float]]:
    torch = engine.torch
    ctx = engine._prompt_ids(messages, "")
    ids = engine.tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = engine.model(torch.tensor([ctx + ids])).logits[0].float()
    logits_at = [logits[len(ctx) + j - 1, t] for j, t in enumerate(ids)]
    logp_at = [torch.log_softmax(logits[len(ctx) + j - 1], -1)[t] for j, t in enumerate(ids)]
    return [float(x) for x in logp_at], [float(x) for x in logits_at]


@pytest.fixture(scope="module", params=[("per_row", 0), ("per_row", 8), ("padded", 0), ("padded", 8)],
                ids=lambda p: f"{p[0]}-prefix{p[1]}")
def engine(request, tiny_llm):
    path, entries = request.param
    e = TransformersEngine(LLMConfig(engine="transformers", model=str(tiny_llm), num_cpus=2, dtype="fp32",
                                     prefix_cache=entries))
    e.per_row = path == "per_row"
    e.prefixes.min_tokens = 4  # the chat template's shared head is reused even on these short prompts
    return e


def test_per_token_scores_match_a_step_by_step_reference(engine):
    got = engine.score_tokens(CONTEXTS, CONTINUATIONS, batch_size=3)
    for msgs, conts, row in zip(CONTEXTS, CONTINUATIONS, got):
        assert len(row) == len(conts)
        for cont, scores in zip(conts, row):
            logp, logits = reference(engine, msgs, cont)
            assert len(scores.logprobs) == len(logp) > 0
            assert scores.logprobs == pytest.approx(logp, abs=1e-4)
            assert scores.logits == pytest.approx(logits, abs=1e-4)
    summed = engine.score(CONTEXTS, CONTINUATIONS, batch_size=3)
    assert [[n for _, n in r] for r in summed] == [[len(s.logprobs) for s in r] for r in got]
    assert summed[0][0][0] == pytest.approx(sum(got[0][0].logprobs), abs=1e-4)
    assert len(engine.last_usage) == len(CONTEXTS)
    if engine.prefixes.entries:
        assert sum(u.cached for u in engine.last_usage) > 0  # the shared head was reused


def test_an_empty_continuation_scores_zero_tokens(engine):
    row = engine.score_tokens(CONTEXTS[:1], [[""]])[0][0]
    assert row.logprobs == [] and row.logits == []
