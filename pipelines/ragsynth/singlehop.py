"""RAGSynth single-hop: rows, checks and example building for the clue and QA stages.

    chunk ──clues──▶ facts citing the chunk's sentence numbers      (M2: clue → sentence)
          ──qa─────▶ question + answer sentences citing facts        (M1: answer sentence → clue)
          ──cite───▶ citations = M2 ∘ M1 (pipelines/stages/citations.py), checked for support

Prompts number sentences and clues from 1 (what models expect); the data model counts from 0.
"""

from __future__ import annotations

import json
import re
from difflib import SequenceMatcher

import pyarrow as pa

from pipelines.core.schema import (
    EXAMPLES,
    REJECT_DETAIL,
    REJECT_REASON,
    dumps,
    stable_id,
    staging,
)
from pipelines.stages.citations import ABOUT_THE_EXERCISE, compose, content_words, support

METHOD = "ragsynth"
EXAMPLE_STAGING = staging(EXAMPLES)


def clue_inputs(batch: pa.Table, max_sentences: int, max_clues: int, min_support: float) -> pa.Table:
    rows = []
    for r in batch.select(["chunk_id", "doc_id", "text", "sentences", "sentence_spans"]).to_pylist():
        spans = r["sentence_spans"][:max_sentences]
        rows.append({"chunk_id": r["chunk_id"], "doc_id": r["doc_id"],
                     "sentence_ids": r["sentences"][: len(spans)],
                     "sentences": [r["text"][s["start"]:s["end"]] for s in spans],
                     "max_clues": max_clues, "min_support": min_support})
    return pa.Table.from_pylist(rows)


# a sentence that opens with one of these leans on an earlier one ("She studied ...")
_LEANING = frozenset("he she it they this these those its their his her there such here".split())


def is_statement(sentence: str, min_words: int) -> bool:
    """``min_words`` content words or more, ending like a sentence (not a heading or a list label)."""
    s = sentence.strip()
    return len(content_words(s)) >= min_words and s[-1:] in ".!?\"')" and not s.startswith(("#", "|", "-", "*"))


def stands_alone(sentence: str, min_words: int) -> bool:
    """A statement that does not open with a word pointing back to an earlier sentence."""
    s = sentence.strip()
    return is_statement(s, min_words) and s.split(maxsplit=1)[0].lower().strip("\"'(") not in _LEANING


def sentence_clues(batch: pa.Table, max_clues: int, min_words: int) -> pa.Table:
    """``clues: sentences`` (RAGSynth §3: for single-hop, clues are the document's sentences):
    the first ``max_clues`` sentences of each chunk that stand alone are its clues verbatim, each
    citing itself (M2 holds exactly); a chunk without one falls back to statements that point
    back ("These shawls are hand spun ..."). The rows have the LLM stage's shape (``llm_output``
    holds the clues), so everything downstream reads one format; a chunk with no statement at
    all is a reject (``no_clue_sentence``)."""
    rows = []
    for r in batch.to_pylist():
        picked = [i for i, t in enumerate(r["sentences"]) if stands_alone(t, min_words)][:max_clues] or \
            [i for i, t in enumerate(r["sentences"]) if is_statement(t, min_words)][:max_clues]
        clues = [{"fact": r["sentences"][i].strip(), "sentences": [i + 1]} for i in picked]
        rows.append({**{k: r[k] for k in ("chunk_id", "doc_id", "sentence_ids", "sentences")},
                     "llm_output": json.dumps({"clues": clues}, ensure_ascii=False) if clues else None,
                     "stage": "ragsynth_clues", "prompt_id": "ragsynth/clues:sentences", "model": "none", "seed": 0,
                     REJECT_REASON: None if clues else "no_clue_sentence",
                     REJECT_DETAIL: None if clues else dumps({"sentences": len(r["sentences"]), "min_words": min_words})})
    return pa.Table.from_pylist(rows)


def check_clues(row: dict, reply: dict) -> str | None:
    """Reject replies whose clues cite sentences the passage does not have, or sentences that
    do not state the clue (M2 must hold before anything is built on it)."""
    n = len(row["sentences"])
    for c in reply["clues"]:
        bad = [i for i in c["sentences"] if not 1 <= i <= n]
        if bad:
            return f"citation_out_of_range: clue cites sentence {bad[0]} of {n}"
        score = support(c["fact"], [row["sentences"][i - 1] for i in c["sentences"]])
        if score < row["min_support"]:
            return f"unsupported_clue: {score:.2f} of the clue's words are in its sentences: {c['fact'][:80]!r}"
    return None


def clue_records(row: dict) -> list[dict]:
    """The clues of one ``ragsynth_clues`` row, with resolved sentence ids and texts."""
    sids, sents = row["sentence_ids"], row["sentences"]
    out = []
    for i, c in enumerate(json.loads(row["llm_output"])["clues"]):
        idx = [j - 1 for j in c["sentences"]]
        out.append({"clue_id": f"{row['chunk_id']}/k{i}", "chunk_id": row["chunk_id"], "doc_id": row["doc_id"],
                    "text": c["fact"].strip(), "sentence_ids": [sids[j] for j in idx],
                    "sentences": [sents[j] for j in idx]})
    return out


def qa_inputs(batch: pa.Table) -> pa.Table:
    rows = []
    for r in batch.select(["chunk_id", "doc_id", "sentence_ids", "sentences", "llm_output"]).to_pylist():
        clues = clue_records(r)
        rows.append({"chunk_id": r["chunk_id"], "doc_id": r["doc_id"], "clue_json": json.dumps(clues),
                     "clues": [c["text"] for c in clues]})
    return pa.Table.from_pylist(rows)


_WORD = re.compile(r"[a-z0-9]+")


def question_problem(question: str, source: str, min_shared: int = 1, max_words: int = 40) -> str | None:
    """Why ``question`` is no question about ``source`` (None when it is one): it does not end with
    '?', asks about the exercise itself, shares fewer than ``min_shared`` content words with the
    source, repeats itself (a three-word run twice: a small model's loop), or runs too long."""
    q = question.strip()
    if not q.endswith("?"):
        return "not_a_question: the question does not end with '?'"
    if ABOUT_THE_EXERCISE.search(q):
        return f"generic_question: it asks about the exercise, not the facts: {q[:80]!r}"
    shared = content_words(q) & content_words(source)
    if len(shared) < min_shared:
        return (f"question_off_topic: the question shares {len(shared)} content word(s) with the clues it "
                f"rests on (at least {min_shared})")
    words = q.lower().split()
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    if len(grams) != len(set(grams)):
        return f"repetitive: the question repeats itself: {q[:80]!r}"
    if len(words) > max_words:
        return f"too_long: {len(words)} words (at most {max_words})"
    return None


def check_qa(row: dict, reply: dict) -> str | None:
    """The answer cites existing clues, and the question is a question about them."""
    n = len(row["clues"])
    for a in reply["answer"]:
        bad = [i for i in a["facts"] if not 1 <= i <= n]
        if bad:
            return f"citation_out_of_range: answer cites fact {bad[0]} of {n}"
    cited = " ".join(row["clues"][i - 1] for a in reply["answer"] for i in a["facts"])
    return question_problem(reply["question"], cited)


def question_inputs(batch: pa.Table) -> pa.Table:
    """``single_hop_answer: facts``: one row per chunk with its first clue, which will be the
    answer verbatim; the LLM writes the question (ragsynth/qa_question)."""
    rows = []
    for r in batch.select(["chunk_id", "doc_id", "sentence_ids", "sentences", "llm_output"]).to_pylist():
        clue = clue_records(r)[0]
        rows.append({"chunk_id": r["chunk_id"], "doc_id": r["doc_id"], "clue_json": json.dumps([clue]),
                     "fact": clue["text"]})
    return pa.Table.from_pylist(rows)


def check_question(row: dict, reply: dict) -> str | None:
    """The question is about the fact that answers it (two content words shared at least), and
    is not the fact itself with a question word in front."""
    problem = question_problem(reply["question"], row["fact"], min_shared=2)
    if problem:
        return problem
    q, fact = _WORD.findall(reply["question"].lower()), _WORD.findall(row["fact"].lower())
    run = SequenceMatcher(None, q, fact, autojunk=False).find_longest_match(0, len(q), 0, len(fact)).size
    if run >= 0.6 * len(fact):
        return f"copied_fact: the question repeats {run} of the fact's {len(fact)} words in a row"
    return None


def clue_struct(c: dict) -> dict:
    return {k: c[k] for k in ("clue_id", "text", "sentence_ids", "chunk_id", "doc_id")}


def cover_rubric(answer_sentences: list[dict]) -> list[dict]:
    """Criteria of a full answer: every answer sentence must be covered."""
    return [{"kind": "cover", "text": s["text"]} for s in answer_sentences]


def example_from(qa: dict, clues: list[dict], composed: dict, *, task: str, lineage: dict,
                 id_parts: tuple, meta: dict | None = None, answer_source: str = "model") -> dict:
    """An examples row from a QA reply and the composition of its citations; ``answer_source``
    says who wrote the answer sentences (the LLM, or the clues verbatim: ``facts``)."""
    question = qa["question"].strip()
    used = [c for c in clues if any(c["clue_id"] in s["clue_ids"] for s in composed["answer_sentences"])]
    chunks = list(dict.fromkeys(c["chunk_id"] for c in clues))
    return {
        "example_id": stable_id(METHOD, task, *id_parts, question), "method": METHOD, "task": task,
        "query": question, "answer": " ".join(s["text"] for s in composed["answer_sentences"]),
        "answer_source": answer_source,
        "citations": composed["citations"], "positives": chunks, "references": chunks,
        "clues": [clue_struct(c) for c in clues],
        "hop": len({c["doc_id"] for c in clues}), "rubric": cover_rubric(composed["answer_sentences"]),
        "meta": dumps({"support": composed["support"], "answer_sentences": composed["answer_sentences"],
                       "used_clues": [c["clue_id"] for c in used], **(meta or {})}),
        **lineage}


def reply_qa(row: dict) -> dict:
    """The QA of a ``ragsynth_qa`` row: the LLM's question and answer, or (a question-only reply)
    its question answered by the row's clue verbatim, citing it (``answer_source`` facts)."""
    qa = json.loads(row["llm_output"])
    if "answer" in qa:
        return {**qa, "answer_source": "model"}
    clues = json.loads(row["clue_json"])
    return {**qa, "answer": [{"sentence": c["text"], "facts": [i + 1]} for i, c in enumerate(clues)],
            "answer_source": "facts"}


def resolve(row: dict, min_support: float, lineage: dict) -> dict:
    """Compose M1 with M2 into citations for a single-hop QA row; ``{"example": ...}`` or
    ``{"reason": ..., "detail": ...}``."""
    qa = reply_qa(row)
    clues = json.loads(row["clue_json"])
    composed = compose(qa["answer"], clues, min_support)
    if "reason" in composed:
        return composed
    return {"example": example_from(qa, clues, composed, task="single_hop", lineage=lineage,
                                    id_parts=(row["chunk_id"],), answer_source=qa["answer_source"])}


def build_examples(batch: pa.Table, min_support: float) -> pa.Table:
    out = []
    for row in batch.to_pylist():
        lineage = {"stage": "ragsynth_cite", "prompt_id": row["prompt_id"], "model": row["model"], "seed": row["seed"]}
        res = resolve(row, min_support, lineage)
        if "example" in res:
            out.append({**res["example"], REJECT_REASON: None, REJECT_DETAIL: None})
        else:  # keep the query text in the reject so a person can see what was dropped
            qa = reply_qa(row)
            out.append({"example_id": stable_id(METHOD, "single_hop", row["chunk_id"], qa["question"]),
                        "method": METHOD, "task": "single_hop", "query": qa["question"],
                        "answer": " ".join(a["sentence"] for a in qa["answer"]), "citations": [],
                        "positives": [row["chunk_id"]], **lineage,
                        REJECT_REASON: res["reason"], REJECT_DETAIL: dumps(res["detail"])})
    return pa.Table.from_pylist(out, schema=EXAMPLE_STAGING)
