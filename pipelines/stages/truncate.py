"""Cutting a reference to a word budget, by one stated rule (recorded, never silent).

Rule: keep the leading whole sentences whose words fit in ``max_words``; when the first sentence
alone is longer, keep its first ``max_words`` words. Sentences end at ``.``, ``!`` or ``?``
followed by white space. The returned record says how many words were cut.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def truncate_words(text: str, max_words: int) -> tuple[str, dict | None]:
    """``(text, None)`` when it fits, else ``(cut text, {"rule", "from_words", "to_words"})``."""
    words = text.split()
    if len(words) <= max_words:
        return text, None
    kept, n = [], 0
    for s in _SENTENCE_END.split(text.strip()):
        w = len(s.split())
        if n + w > max_words:
            break
        kept.append(s)
        n += w
    if kept:
        out, rule = " ".join(kept), "leading_sentences"
    else:
        out, rule = " ".join(words[:max_words]), "leading_words"
    return out, {"rule": rule, "from_words": len(words), "to_words": len(out.split())}
