"""Readers for ``synthrag eval factuality``: one item per question,
``{id, question, answers: [ground truth, alternatives...], references: [text, ...]}``.

Formats, told apart per line by their fields:

- CRAG (Yang et al., 2024): ``query``, ``answer``, ``alt_ans``, ``search_results`` with
  ``page_snippet`` / ``page_result`` (HTML, used when the snippet is empty, tags stripped) /
  ``page_name``; ``.jsonl`` or ``.jsonl.bz2``.
- HotpotQA distractor setting: ``question``, ``answer``, ``context`` as ``{title: [...],
  sentences: [[...], ...]}`` (the HF layout) or ``[[title, [sentences]], ...]`` (the original).
- generic: ``question``, ``answer`` (optionally ``alt_answers``), ``references`` (strings or
  ``{title, text}``).

Nothing is lost silently: a line that is not JSON, an unknown layout, an empty question or an
empty ground-truth answer is counted under its reason (``bad_json``, ``unknown_format``,
``empty_question``, ``empty_answer``). A ``.bz2`` file cut short raises
:class:`TruncatedInput` naming the rows read before the cut, unless ``allow_truncated`` is set:
then the rows before the cut are kept and the cut is counted (``truncated_input``).

References are ordered by word overlap with the question (a stand-in for the paper's BGE ranking,
§5.1.1; ties keep the file's order) unless ``rank="given"``.
"""

from __future__ import annotations

import bz2
import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterator

_TAG = re.compile(r"<[^>]+>")
_WORD = re.compile(r"\w+")
_STOP = frozenset("the a an of in on at to for and or is was were are be by with what which who when where how "
                  "did does do from as that this it its".split())


class TruncatedInput(ValueError):
    """A compressed file ended before its end-of-stream marker."""


def _lines(path: Path, counts: Counter, allow_truncated: bool) -> Iterator[tuple[int, str]]:
    opener = bz2.open if path.suffix == ".bz2" else open
    n = 0
    with opener(path, "rt", encoding="utf-8") as f:
        try:
            for n, line in enumerate(f, start=1):
                yield n, line
        except EOFError as e:
            if not allow_truncated:
                raise TruncatedInput(f"{path} is truncated ({e}); {n} complete line(s) were read before the cut. "
                                     f"Re-download it, or pass --allow-truncated to evaluate those rows "
                                     f"(the cut is counted in the summary).") from None
            counts["truncated_input"] += 1


def _text(html: str) -> str:
    return " ".join(_TAG.sub(" ", html or "").split())


def parse(rec: dict) -> tuple[str, dict | None]:
    """``(format, item)`` for one record; item None when its layout is unknown."""
    if "query" in rec and "search_results" in rec:
        refs = []
        for s in rec.get("search_results") or []:
            body = (s.get("page_snippet") or "").strip() or _text(s.get("page_result") or "")[:2000]
            title = (s.get("page_name") or "").strip()
            if body:
                refs.append(f"{title}: {body}" if title else body)
        alts = rec.get("alt_ans") or []
        return "crag", {"id": str(rec.get("interaction_id", "")), "question": rec["query"],
                        "answers": [rec.get("answer")] + [a for a in alts if a], "references": refs}
    if "question" in rec and "context" in rec:
        ctx = rec["context"]
        if isinstance(ctx, dict):
            pairs = list(zip(ctx.get("title", []), ctx.get("sentences", [])))
        else:
            pairs = [(c[0], c[1]) for c in ctx]
        refs = [f"{t}: {''.join(s).strip()}" for t, s in pairs]
        return "hotpotqa", {"id": str(rec.get("id", rec.get("_id", ""))), "question": rec["question"],
                            "answers": [rec.get("answer")], "references": refs}
    if "question" in rec and "references" in rec:
        refs = []
        for r in rec["references"] or []:
            if isinstance(r, dict):
                t = (r.get("title") or "").strip()
                refs.append(f"{t}: {r.get('text', '')}" if t else str(r.get("text", "")))
            else:
                refs.append(str(r))
        return "generic", {"id": str(rec.get("id", "")), "question": rec["question"],
                           "answers": [rec.get("answer")] + list(rec.get("alt_answers") or []), "references": refs}
    return "unknown", None


def overlap_rank(question: str, references: list[str]) -> list[str]:
    q = {w for w in _WORD.findall(question.lower()) if w not in _STOP}
    scored = [(-len(q & set(_WORD.findall(r.lower()))), i, r) for i, r in enumerate(references)]
    return [r for _, _, r in sorted(scored)]


def read_items(path: str | Path, *, limit: int | None = None, allow_truncated: bool = False,
               rank: str = "overlap") -> tuple[list[dict], Counter]:
    """Items and the counts of what was read and skipped (every line is accounted for)."""
    path = Path(path)
    counts: Counter = Counter()
    items: list[dict] = []
    for n, line in _lines(path, counts, allow_truncated):
        if not line.strip():
            continue
        counts["lines"] += 1
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            counts["bad_json"] += 1
            continue
        fmt, item = parse(rec) if isinstance(rec, dict) else ("unknown", None)
        if item is None:
            counts["unknown_format"] += 1
            continue
        if not str(item["question"] or "").strip():
            counts["empty_question"] += 1
            continue
        item["answers"] = [str(a).strip() for a in item["answers"] if a is not None and str(a).strip()]
        if not item["answers"]:
            counts["empty_answer"] += 1
            continue
        item["id"] = item["id"] or f"line{n}"
        item["format"] = fmt
        if rank == "overlap":
            item["references"] = overlap_rank(item["question"], item["references"])
        counts[f"format_{fmt}"] += 1
        items.append(item)
        if limit and len(items) >= limit:
            break
    counts["items"] = len(items)
    return items, counts
