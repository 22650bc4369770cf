"""Reading the LLM actor's scoring replies (teacher-forced log-probs of fixed continuations).

A judge prompt declares ``continuations`` (``[" Yes", " No"]``, or the one text to score); the
actor returns their summed log-probs and token counts. Every judge in every method reads its
reply through these two functions.
"""

from __future__ import annotations

import math


def yes_probability(reply: dict) -> float:
    """P(Yes) of a Yes/No scoring reply, normalised over the two."""
    y, n = reply["logprobs"]
    m = max(y, n)
    if m == -math.inf:
        return 0.0
    return math.exp(y - m) / (math.exp(y - m) + math.exp(n - m))


def per_token(reply: dict) -> float:
    """Mean log-probability per token of a one-continuation scoring reply."""
    return reply["logprobs"][0] / max(1, reply["tokens"][0])
