"""Sentence-level citations: RAGSynth's mappings composed and checked.

A generated answer is a list of sentences, each citing *clues* by number (M1: answer sentence →
clue); a clue cites the document sentences it was read from (M2: clue → (chunk, sentence)).
:func:`compose` turns M2 ∘ M1 into ``citations`` and checks that every answer sentence is
supported by the sentences it ends up citing (:func:`support`: the share of its content words
found there). A reference that does not resolve, or an unsupported sentence, rejects the example
with a reason — citations are only ever written when they hold.
"""

from __future__ import annotations

import re
from typing import Sequence

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("""a an the of and or to in on for with by from at as is are was were be been being
this that these those it its which who whom what when where why how do does did not no than then
there their they them he she his her we our you your i can could may might will would shall should
into about over under between also such more most other some any each all both""".split())


# wording about the exercise, not about the facts ("What is the answer to this question?",
# "What does the passage say?"): a small model's way out of writing a real question
ABOUT_THE_EXERCISE = re.compile(r"\b((the|this|your|an|my) answers?|this question|the question|the following|this fact|the fact|these facts|"
                                r"the facts|this text|the text|this passage|the passage|the passages|the statement)\b", re.I)


def content_words(text: str, min_len: int = 3) -> set[str]:
    """Lower-cased words of at least ``min_len`` characters, stop words left out."""
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) >= min_len}


def support(answer: str, cited: Sequence[str]) -> float:
    """Fraction of the answer's content words found in the cited sentences (1.0 = all)."""
    words = content_words(answer)
    if not words:
        return 0.0
    source = content_words(" ".join(cited))
    return len(words & source) / len(words)


def compose(answer: Sequence[dict], clues: Sequence[dict], min_support: float) -> dict:
    """Citations of an answer whose sentences cite clues by 1-based number.

    ``answer``: ``[{"sentence": str, "facts": [int, ...]}]`` as the model wrote it.
    ``clues``: ``[{"clue_id", "chunk_id", "doc_id", "text", "sentence_ids", "sentences"}]`` where
    ``sentences`` are the texts of ``sentence_ids``.

    Returns ``{"answer_sentences": [{"text", "sentence_ids", "clue_ids"}], "citations":
    [{"chunk_id", "sentence_id"}], "support": [float], "docs": [doc_id, ...]}`` or, when the
    example must be dropped, ``{"reason": ..., "detail": ...}``.
    """
    citations: list[dict] = []
    out_sentences, scores, docs = [], [], []
    for item in answer:
        facts = [f - 1 for f in item["facts"]]
        if not facts or any(not 0 <= f < len(clues) for f in facts):
            return {"reason": "unresolved_citation",
                    "detail": {"answer_sentence": item, "clues": len(clues)}}
        cited = [(clues[f]["chunk_id"], sid, text) for f in facts
                 for sid, text in zip(clues[f]["sentence_ids"], clues[f]["sentences"])]
        if not cited:
            return {"reason": "unresolved_citation", "detail": {"answer_sentence": item}}
        score = support(item["sentence"], [t for _, _, t in cited])
        scores.append(score)
        if score < min_support:
            return {"reason": "unsupported_answer",
                    "detail": {"answer_sentence": item["sentence"], "support": round(score, 3),
                               "cited": [t for _, _, t in cited]}}
        sids = []
        for chunk_id, sid, _ in cited:
            c = {"chunk_id": chunk_id, "sentence_id": sid}
            if c not in citations:
                citations.append(c)
            if sid not in sids:
                sids.append(sid)
        for f in facts:
            if clues[f]["doc_id"] not in docs:
                docs.append(clues[f]["doc_id"])
        out_sentences.append({"text": item["sentence"].strip(), "sentence_ids": sids,
                              "clue_ids": [clues[f]["clue_id"] for f in facts]})
    return {"answer_sentences": out_sentences, "citations": citations,
            "support": [round(s, 3) for s in scores], "docs": docs}


def cited_sentence_ids(citations: Sequence[dict]) -> list[str]:
    return [c["sentence_id"] for c in citations]


def f1(predicted: Sequence[str], reference: Sequence[str]) -> float:
    """F1 of two sets of ids; two empty sets agree perfectly (a refusal citing nothing)."""
    p, r = set(predicted), set(reference)
    if not p and not r:
        return 1.0
    if not p or not r:
        return 0.0
    tp = len(p & r)
    if tp == 0:
        return 0.0
    precision, recall = tp / len(p), tp / len(r)
    return 2 * precision * recall / (precision + recall)
