"""Passage-level utility by perturbation (SCARLet §3.4, Appendix B).

For one example (input x, ground truth y) and its k context passages: draw ``n`` keep-masks
``v ∈ {0,1}^k`` (each passage kept with probability ``p``; seeded), score y under teacher
forcing with the generator given only the kept passages, ``z = Σ_t logit(y_t)`` (Eq. 5), and fit
a ridge regression with intercept, ``min_α Σ_i (z_i − α₀ − α·v_i)² + λ‖α‖²`` (Eq. 4; the
intercept is not penalised, as in the usual ridge). ``α_j`` is passage j's utility. Unlike LIME,
samples are not weighted by their distance to the full context (Appendix B says why).

``target="logprob"`` uses log-softmax values instead of raw logits: invariant to a shift of all
logits at one position, which raw logits are not (a departure offered as an option; the paper's
is the default).

Baselines for ``synthrag eval attribution``: leave-one-out (z of the full context minus z without
passage j), embedding similarity to the question, random.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

Target = Literal["logit", "logprob"]


def sample_masks(k: int, n: int, p: float = 0.5, seed: int = 0) -> np.ndarray:
    """``n`` keep-masks over ``k`` passages (bool ``[n, k]``), each passage kept with
    probability ``p``; seeded, so a rerun scores the same subsets."""
    rng = np.random.default_rng(seed)
    return rng.random((n, k)) < p


def fit_ridge(masks: np.ndarray, z: Sequence[float], lam: float = 1.0) -> tuple[float, np.ndarray]:
    """(intercept α₀, utilities α) of Eq. 4, in closed form: the intercept is unpenalised,
    which is the same as centring masks and targets and solving (XᵀX + λI)α = Xᵀy."""
    X = np.asarray(masks, dtype=np.float64)
    y = np.asarray(z, dtype=np.float64)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"{len(y)} targets for masks of shape {X.shape}")
    xm, ym = X.mean(0), y.mean()
    Xc, yc = X - xm, y - ym
    alpha = np.linalg.solve(Xc.T @ Xc + lam * np.eye(X.shape[1]), Xc.T @ yc)
    return float(ym - xm @ alpha), alpha


def target_value(scores: dict, target: Target) -> float:
    """z of a scoring reply's (first) continuation: the sum of its tokens' raw logits (Eq. 5)
    or log-probs. ``scores`` is the reply of a ``per_token`` scoring prompt."""
    values = scores["token_logits" if target == "logit" else "token_logprobs"][0]
    if values is None:
        raise ValueError(f"the engine returned no per-token {target}s (vLLM: set llm.logprobs_mode)")
    return float(sum(values))


def leave_one_out(z_full: float, z_without: Sequence[float]) -> np.ndarray:
    """Utility of passage j = how much the answer's score drops when j alone is removed."""
    return z_full - np.asarray(z_without, dtype=np.float64)


def loo_masks(k: int) -> np.ndarray:
    """The full context, then the context without each passage in turn (bool ``[k + 1, k]``)."""
    return np.vstack([np.ones((1, k), bool), ~np.eye(k, dtype=bool)])


def truncate_words(text: str, max_words: int) -> tuple[str, bool]:
    words = text.split()
    return (" ".join(words[:max_words]), True) if len(words) > max_words else (text, False)


def passage_budget(k: int, question_words: int, answer_words: int, max_input_tokens: int,
                   max_passage_words: int, tokens_per_word: float = 1.6) -> int:
    """Words kept per passage so the full context fits the model's input: at most
    ``max_passage_words``, lowered until k passages + question + answer, at ~1.6 tokens per
    word plus 64 tokens of template, fit ``max_input_tokens``. The same cut applies to every
    mask, so no mask is truncated differently from another (truncating a long prompt from the
    left, as other stages do, would remove different passages for different masks)."""
    room = (max_input_tokens - 64) / tokens_per_word - question_words - answer_words
    return max(8, min(max_passage_words, int(room // max(k, 1))))
