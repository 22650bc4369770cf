"""The stopping rules of PrismRAG's two loops, as pure functions (the pipeline runs each round
as its own resumable stage; these decide what a round's attempts mean).

- Distractor critique loop (§4.2 step 3): an attempt passes when every critique score
  (relevance, distraction, format; 1-5) is at least ``pass_score`` (4); the loop stops at the
  first passing attempt or after ``max_attempts`` (5). The critique's feedback (or, for an
  attempt that failed to parse, the error) goes into the next generation prompt.
- Strategization regeneration budget (§4.3 steps 4-5): attempts ``1..stochastic_attempts`` (6)
  rerun the thought generation with a new seed; later attempts up to ``budget`` (10) are
  critique-based revisions showing the previous attempt and the evaluators' analysis. The first
  attempt whose thought and answer scores are both ``pass_score`` (4) is kept.
"""

from __future__ import annotations

CRITIQUE_SCORES = ("relevance", "distraction", "format")


def critique_passes(scores: dict, pass_score: int) -> bool:
    """All three critique scores present and ≥ ``pass_score``."""
    return all(scores.get(k) is not None and scores[k] >= pass_score for k in CRITIQUE_SCORES)


def strategy_mode(attempt: int, stochastic_attempts: int) -> str:
    """``stochastic`` for attempts 1..stochastic_attempts, then ``revision`` (1-based)."""
    return "stochastic" if attempt <= stochastic_attempts else "revision"


def strategy_passes(thought_score: int | None, answer_score: int | None, pass_score: int) -> bool:
    return thought_score is not None and answer_score is not None and \
        thought_score >= pass_score and answer_score >= pass_score


def distractor_feedback(attempt: dict) -> str:
    """What the next distractor generation is told about this failed attempt."""
    if attempt.get("error"):
        return f"the reply was not usable ({attempt['error'][:160]})"
    scores = ", ".join(f"{k} {attempt.get(k)}/5" for k in CRITIQUE_SCORES)
    return f"{scores}. {attempt.get('feedback') or ''}".strip()


def strategy_critique(attempt: dict) -> str:
    """The critique a revision sees: the thought evaluator's analysis (§4.3 step 4), plus the
    answer evaluator's when it ran, or the error of an attempt that could not be used."""
    if attempt.get("error"):
        return f"The previous reply was not usable ({attempt['error'][:160]})."
    parts = [f"Reasoning score {attempt.get('thought_score')}/4: {attempt.get('thought_analysis') or ''}".strip()]
    if attempt.get("answer_score") is not None:
        parts.append(f"Answer score {attempt['answer_score']}/4: {attempt.get('answer_analysis') or ''}".strip())
    return " ".join(parts)


def first_passing(attempts: list[dict]) -> dict | None:
    """The earliest attempt marked ``passed`` (attempts in any order)."""
    ok = [a for a in attempts if a.get("passed")]
    return min(ok, key=lambda a: a["attempt"]) if ok else None


def best_attempt(attempts: list[dict], score_keys: tuple[str, ...]) -> dict:
    """The attempt with the highest summed scores (missing = 0), earliest on ties."""
    return max(sorted(attempts, key=lambda a: a["attempt"]),
               key=lambda a: sum((a.get(k) or 0) for k in score_keys))


def next_round_needed(attempts_done: int, limit: int, failing: int) -> bool:
    """Another round runs while some rows still fail and the budget is not spent."""
    return failing > 0 and attempts_done < limit
