"""The small-model path of PrismRAG's loops: code that writes or scores what the paper asks an
LLM to, replying in the *same JSON* as the prompt it stands in for, so every later step (the
round tables, the stopping rules, the select, the funnel) is the same on both paths.

Why: with SmolLM2-135M the LLM writer's distractors were not passages and its critic scored
every attempt 1/1/1; its thought evaluator scored every strategy 1 (RESULTS.md, issue 17). Each
rule is a line in docs/FIDELITY.md#prismrag. ``auto`` settings pick them for the small model only.

- :func:`substitute` (§4.2 step 1, writer ``substitute``): the key facts are the golden
  passage's named entities, dates and numbers (spaCy), those in the answer first; each is replaced,
  everywhere in the passage, by a different one of the same label from the corpus's entity pool
  (a fact with digits has its numbers shifted instead, so it keeps its form); a name is replaced
  by one of as many words, and its short forms ("Gimelstob" of "Justin Gimelstob") by the same
  part of the replacement, so the passage stays consistent. The distractor's answer is the answer
  with the same replacements. Each attempt draws anew (its own seed).
- :func:`critique` (§4.2 step 2, critic ``rule``): relevance = share of the passage's other
  content words the distractor keeps; distraction = share of key facts changed, and whether the
  answer changed; format = length ratio; each mapped onto 1-5, with feedback naming what failed.
- :func:`thought_eval` / :func:`answer_eval` (§4.3 steps 2-3, evaluator ``rule``): the share of
  the reasoning's content words found in the references and question, and whether the reasoning
  reaches its answer; the reference answer's words recalled by the candidate. 1-4 with an analysis.
"""

from __future__ import annotations

import random
import re

from pipelines.eval.factuality import rule_label
from pipelines.stages.citations import content_words
from pipelines.stages.entities import normalise_name

# spaCy labels a distractor may change (§4.2: "key entities, locations, dates")
SWAPPABLE = ("PERSON", "ORG", "GPE", "LOC", "FAC", "NORP", "EVENT", "WORK_OF_ART", "PRODUCT", "LAW", "LANGUAGE",
             "DATE", "TIME", "CARDINAL", "QUANTITY", "MONEY", "PERCENT", "ORDINAL")
_NUMERIC = ("DATE", "TIME", "CARDINAL", "QUANTITY", "MONEY", "PERCENT", "ORDINAL")
_NUMBER = re.compile(r"\d+")


def words(text: str | None) -> set[str]:
    """Content words of any length (answers are often short: "UK", "3")."""
    return content_words(text or "", min_len=1)


# ----------------------------------------------------------------------------- §4.2 writer
def entity_pool(mention_lists: list[list[dict]], per_label: int, seed: int) -> dict[str, list[str]]:
    """label → up to ``per_label`` distinct entity texts (seeded sample) from NER mentions."""
    by_label: dict[str, dict[str, str]] = {}
    for mentions in mention_lists:
        for m in mentions or []:
            if m["label"] in SWAPPABLE and normalise_name(m["text"]):
                by_label.setdefault(m["label"], {}).setdefault(normalise_name(m["text"]), m["text"])
    rng = random.Random(seed)
    out = {}
    for label, names in sorted(by_label.items()):
        texts = sorted(names.values())
        out[label] = sorted(rng.sample(texts, min(per_label, len(texts))))
    return out


def key_facts(mentions: list[dict], answer: str, limit: int) -> list[dict]:
    """Distinct swappable mentions, those whose words are in the answer first, then in order."""
    seen, facts = set(), []
    for m in mentions or []:
        key = normalise_name(m["text"])
        if m["label"] in SWAPPABLE and key and key not in seen:
            seen.add(key)
            facts.append(m)
    ans = words(answer)
    facts.sort(key=lambda m: not (words(m["text"]) & ans))  # stable: answer facts first
    chosen = facts[:limit]
    # a short form of a chosen name ("Gimelstob" of "Justin Gimelstob") changes with it
    return chosen + [m for m in facts[limit:] if any(_part_of(m["text"], c["text"]) is not None for c in chosen)]


def _part_of(short: str, long: str) -> int | None:
    """Where ``short``'s tokens run inside ``long``'s (a shorter, whole-token part), else None."""
    s, t = short.split(), long.split()
    if len(s) >= len(t):
        return None
    return next((i for i in range(len(t) - len(s) + 1) if t[i:i + len(s)] == s), None)


def _shift_number(text: str, rng: random.Random) -> str | None:
    """``1987`` → ``1991``, ``three`` stays (None): digits shifted by a nonzero amount."""
    if not _NUMBER.search(text):
        return None

    def shift(m: re.Match) -> str:
        n = int(m.group())
        step = rng.choice([d for d in range(-9, 10) if d and n + d >= 0]) if len(m.group()) < 4 else rng.choice(
            [d for d in range(-15, 16) if d])
        return str(n + step)

    return _NUMBER.sub(shift, text)


def _replacement(fact: dict, pool: dict[str, list[str]], avoid: set[str], rng: random.Random) -> str | None:
    """A fact with digits is shifted (``41 years`` → ``37 years``: same form); a date or amount
    without digits (``this year``) is kept; any other takes a pool entity of its label,
    possessive kept (``Eiffel's`` → ``Owens's``)."""
    if _NUMBER.search(fact["text"]):
        return _shift_number(fact["text"], rng)
    if fact["label"] in _NUMERIC:
        return None
    options = [t for t in pool.get(fact["label"], []) if normalise_name(t) not in avoid]
    if not options:
        return None
    same_shape = [t for t in options if len(t.split()) == len(fact["text"].split())]  # "Ann Lee" for "Bo Ma"
    new = rng.choice(same_shape or options)
    return new.rstrip("'’") + "'s" if fact["text"].endswith("'s") and not new.endswith("'s") else new


def _swap(text: str, pairs: list[tuple[str, str]]) -> str:
    """Every whole-word occurrence of each old text replaced (longest first, one pass)."""
    if not pairs:
        return text
    table = dict(pairs)
    pattern = re.compile("|".join(rf"(?<!\w){re.escape(o)}(?!\w)" for o in sorted(table, key=len, reverse=True)))
    return pattern.sub(lambda m: table[m.group()], text)


def substitute(row: dict, pool: dict[str, list[str]], max_facts: int, seed: int) -> dict | None:
    """The distractor reply (``key_facts``, ``open_question``, ``distractor``,
    ``distractor_answer``) for one seed, or None when the passage has no fact to change."""
    facts = key_facts(row.get("mentions") or [], row["answer"], max_facts)
    if not facts:
        return None
    rng = random.Random(f"{seed}:{row['seed_id']}:{row['attempt']}")
    avoid = {normalise_name(m["text"]) for m in row.get("mentions") or []}
    pairs: list[tuple[str, str]] = []
    for f in sorted(facts, key=lambda m: -len(m["text"].split())):  # full names before their parts
        new = _alias(f["text"], pairs) or _replacement(f, pool, avoid, rng)
        if new and normalise_name(new) != normalise_name(f["text"]):
            avoid.add(normalise_name(new))
            pairs.append((f["text"], new))
    if not pairs:
        return None
    order = {m["text"]: i for i, m in enumerate(facts)}
    pairs.sort(key=lambda p: order[p[0]])
    return {"key_facts": [o for o, _ in pairs], "open_question": row["question"],
            "distractor": _swap(row["reference"], pairs), "distractor_answer": _swap(row["answer"], pairs)}


def _alias(short: str, pairs: list[tuple[str, str]]) -> str | None:
    """The same part of a longer name's replacement: "Gimelstob" → "Elliott" once "Justin
    Gimelstob" → "Stuart Elliott" (only between names of the same number of tokens)."""
    for old, new in pairs:
        i = _part_of(short, old)
        if i is not None and len(new.split()) == len(old.split()):
            return " ".join(new.split()[i:i + len(short.split())])
    return None


# ----------------------------------------------------------------------------- §4.2 critic
def _band(x: float, cuts: tuple[float, ...]) -> int:
    """1 + the number of cuts ``x`` reaches (cuts ascending)."""
    return 1 + sum(x >= c for c in cuts)


def critique(row: dict) -> dict:
    """Relevance, distraction and format 1-5 with feedback, for one distractor attempt."""
    ref, dis = row["reference"], row["distractor"] or ""
    facts = [f for f in (row.get("key_facts") or []) if f]
    fact_words = set().union(*(words(f) for f in facts)) if facts else set()
    body = content_words(ref) - fact_words
    kept = len(body & content_words(dis)) / len(body) if body else 0.0
    relevance = _band(kept, (0.2, 0.4, 0.6, 0.8))
    changed = [f for f in facts if not re.search(rf"(?<!\w){re.escape(f)}(?!\w)", dis, re.I)]
    share = len(changed) / len(facts) if facts else 0.0
    answer_kept = bool(words(row["answer"])) and words(row["answer"]) <= content_words(dis, min_len=1)
    answer_changed = (row.get("distractor_answer") or "").strip().lower() not in ("", row["answer"].strip().lower())
    distraction = 1 if answer_kept or not answer_changed else _band(share, (0.01, 0.34, 0.67, 1.0))
    ratio = len(dis.split()) / max(1, len(ref.split()))
    fit = min(ratio, 1 / ratio) if ratio else 0.0
    fmt = _band(fit, (0.3, 0.5, 0.7, 0.85))
    notes = []
    if relevance < 4:
        notes.append(f"keep the passage's topic: only {kept:.0%} of its other words remain")
    if answer_kept or not answer_changed:
        notes.append("the answer must change: the distractor still states it")
    elif share < 1:
        notes.append(f"change every key fact ({len(facts) - len(changed)} of {len(facts)} unchanged)")
    if fmt < 4:
        notes.append(f"match the passage's length ({len(dis.split())} words vs {len(ref.split())})")
    return {"feedback": "; ".join(notes) or "ok", "relevance": relevance, "distraction": distraction, "format": fmt}


# ----------------------------------------------------------------------------- §4.3 evaluators
def thought_eval(row: dict) -> dict:
    """Is the reasoning grounded in the references (and the question) and does it reach its
    answer? 4: ≥ 80% of its content words are in the sources and it states the answer."""
    reasoning = " ".join(row.get("reasoning") or [])
    said = content_words(reasoning)
    sources = content_words(" ".join([*(row.get("references") or []), row["question"]]))
    grounded = len(said & sources) / len(said) if said else 0.0
    cand = words(row.get("candidate"))
    reaches = bool(cand) and cand <= content_words(reasoning, min_len=1) | sources
    steps = [s.strip().lower() for s in row.get("strategy") or []]
    repeated = len(set(steps)) < len(steps)
    score = _band(grounded, (0.4, 0.6, 0.8))
    if score == 4 and (not reaches or repeated):
        score = 3
    analysis = (f"{grounded:.0%} of the reasoning's words are in the references; "
                f"{'it states' if reaches else 'it does not state'} its answer"
                f"{'; a strategy step repeats' if repeated else ''}"
                + ("" if score == 4 else f"; unsupported: {', '.join(sorted(said - sources)[:6])}"))
    return {"analysis": analysis, "score": score}


def answer_eval(row: dict) -> dict:
    """The candidate against the reference answer: 1 refusal/empty, 2 different, 3 partly, 4 the
    reference answer's content words all present (or 80% when it has five or more)."""
    cand, truth = row.get("candidate") or "", row["answer"]
    if rule_label(cand, [truth]) == "missing":  # eval factuality's rule: empty, or a refusal
        return {"analysis": "no answer or a refusal", "score": 1}
    want = words(truth)
    got = want & words(cand)
    recall = len(got) / len(want) if want else float(cand.strip().lower() == truth.strip().lower())
    full = recall == 1.0 or (len(want) >= 5 and recall >= 0.8)
    score = 4 if full else 3 if recall >= 0.5 else 2
    missing = sorted(want - got)
    analysis = f"recalls {recall:.0%} of the reference answer's words" + (f"; missing: {', '.join(missing[:6])}"
                                                                         if missing else "")
    return {"analysis": analysis, "score": score}
