"""Soft answer matching for Source2Synth's curation and evaluators.

The paper scores HotpotQA with *soft exact match* (§4, "soft EM": the reference is contained in
the prediction) and tables by exact match of the executed answer. :func:`soft_match` is the one
rule every part uses:

- text: normalised exact match (SQuAD normalisation: lower case, punctuation and articles dropped,
  whitespace collapsed), or containment of the normalised reference in the normalised prediction
  as whole words (a one-word reference "no" is not found inside "not");
- numbers: when the reference is one number, a number in the prediction within
  ``tolerance`` (relative; absolute below 1) matches ("2,013" and "2013.0" match "2013");
- tables: :func:`denotation_match` compares value lists the WikiTableQuestions way
  (:mod:`pipelines.eval.tableqa_metrics`), order-free.

:func:`em_f1` is the HotpotQA token EM/F1 (official normalisation) for the multi-hop evaluator.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

from pipelines.eval.tableqa_metrics import denotation_correct

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"[-+\u2212]?\d[\d,]*(?:\.\d+)?|[-+]?\.\d+")


def normalize_answer(s: str) -> str:
    """SQuAD/HotpotQA normalisation: lower case, no punctuation, no articles, single spaces."""
    s = (s or "").lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def numbers(text: str) -> list[float]:
    """The numbers written in ``text`` ("1,234.5" → 1234.5; "−3" → -3)."""
    out = []
    for m in _NUMBER.finditer(text or ""):
        raw = m.group(0).replace(",", "").replace("\u2212", "-")
        try:
            out.append(float(raw))
        except ValueError:
            continue
    return out


def _single_number(text: str) -> float | None:
    """The reference's value when the whole reference is one number, else None."""
    t = (text or "").strip().rstrip("%").strip()
    found = numbers(t)
    if len(found) != 1:
        return None
    rest = _NUMBER.sub("", t, count=1).strip(" .")
    return found[0] if not rest else None


def numeric_match(prediction: str, reference: str, tolerance: float = 0.01) -> bool:
    """A one-number reference, and a number of the prediction within ``tolerance``."""
    ref = _single_number(reference)
    if ref is None:
        return False
    bound = tolerance * max(1.0, abs(ref))
    return any(abs(p - ref) <= bound for p in numbers(prediction))


def soft_match(prediction: str, reference: str, tolerance: float = 0.01) -> bool:
    """Normalised exact match, whole-word containment, or the numeric tolerance (module doc)."""
    if prediction is None or reference is None:
        return False
    p, r = normalize_answer(prediction), normalize_answer(reference)
    if not r:
        return False
    if p == r or f" {r} " in f" {p} ":
        return True
    return numeric_match(prediction, reference, tolerance)


def denotation_match(predicted: Sequence[str], target: Sequence[str]) -> bool:
    """WTQ denotation equality of two value lists (order-free, numbers and dates as values)."""
    if not target:
        return False
    return denotation_correct([str(p) for p in predicted], [str(t) for t in target])


def em_f1(prediction: str, reference: str) -> tuple[float, float]:
    """HotpotQA's exact match and token F1 (yes/no/noanswer must match exactly)."""
    p, r = normalize_answer(prediction or ""), normalize_answer(reference or "")
    em = float(p == r)
    if p in ("yes", "no", "noanswer") or r in ("yes", "no", "noanswer"):
        return em, em
    pt, rt = p.split(), r.split()
    common = Counter(pt) & Counter(rt)
    same = sum(common.values())
    if not same:
        return em, 0.0
    precision, recall = same / len(pt), same / len(rt)
    return em, 2 * precision * recall / (precision + recall)
