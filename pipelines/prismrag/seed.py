"""§4.1 seed QA: golden references from the corpus and one question-answer pair per reference.

A golden reference is one chunk, or ``seed_qa.chunks_per_reference`` consecutive chunks of one
document; its text is cut to ``seed_qa.max_reference_words`` by the rule in
:mod:`pipelines.stages.truncate` (recorded under ``truncated``). The LLM answers ``N/A`` when the
text cannot support a question (Appendix 9: "reject designing QA when reference content is not
readable"): that row is a reject ``no_seed_qa``; an empty question or answer is ``empty_answer``;
a word repeated five times in a row is ``degenerate_reply``; a question without ``?`` is
``not_a_question``; one about the current time, date or place (App. 13.1 forbids them) is
``asks_current_context``; one about the exercise ("What is the answer to this question?") is
``generic_question``; an answer with fewer than half of its words in the reference (§4.1: the
answer is supported by the reference) is ``answer_not_in_reference``.
"""

from __future__ import annotations

import json
import re

import pyarrow as pa

from pipelines.core.schema import stable_id
from pipelines.stages.citations import ABOUT_THE_EXERCISE, content_words
from pipelines.stages.truncate import truncate_words

NA = {"n/a", "na", "none", "n.a.", ""}
# Appendix 13.1: "Never generate a question that is asking for the current time, date, or location"
_CURRENT = re.compile(r"\b(current|today'?s?|right now|nearby)\b.*\b(time|date|day|year|location|place|weather)\b|"
                      r"\bwhat (time|day|date) is it\b|\bwhere am i\b", re.I)
_REPEAT = re.compile(r"\b(\w+)(?:\W+\1\b){4,}", re.I)  # one word five times in a row: a degenerate reply


def reference_rows(batch: pa.Table, chunks_per_reference: int, max_words: int, user_time: str | None,
                   user_location: str | None) -> pa.Table:
    """One group (a document's chunks, in order) → references of ``chunks_per_reference`` chunks."""
    rows = sorted(batch.select(["chunk_id", "doc_id", "title", "text", "char_start"]).to_pylist(),
                  key=lambda r: r["char_start"])
    out = []
    for i in range(0, len(rows), chunks_per_reference):
        part = rows[i:i + chunks_per_reference]
        text = "\n".join(r["text"] for r in part)
        cut, record = truncate_words(text, max_words)
        ids = [r["chunk_id"] for r in part]
        out.append({"seed_id": stable_id("prismrag", *ids), "doc_id": part[0]["doc_id"], "title": part[0]["title"],
                    "chunk_ids": ids, "reference": cut, "truncated": json.dumps(record) if record else None,
                    "user_time": user_time, "user_location": user_location})
    return pa.Table.from_pylist(out, schema=REFERENCE)


REFERENCE = pa.schema([("seed_id", pa.string()), ("doc_id", pa.string()), ("title", pa.string()),
                       ("chunk_ids", pa.list_(pa.string())), ("reference", pa.string()),
                       ("truncated", pa.string()), ("user_time", pa.string()), ("user_location", pa.string())])


def check_seed(row: dict, reply: dict) -> str | None:
    q, a = reply["question"].strip(), reply["answer"].strip()
    if q.lower() in NA or a.lower() in NA:
        return "no_seed_qa: the model found no question the reference supports (N/A)"
    if not q.strip(" ?.") or not a.strip(" .,"):
        return "empty_answer: the question or the answer is empty"
    if _REPEAT.search(q) or _REPEAT.search(a):
        return "degenerate_reply: a word repeats five times in a row"
    if not q.endswith("?"):
        return "not_a_question: the question does not end with '?'"
    if ABOUT_THE_EXERCISE.search(q):
        return "generic_question: the question is about the exercise, not the text's facts"
    if _CURRENT.search(q):
        return "asks_current_context: the question asks for the current time, date or location (App. 13.1)"
    said = content_words(a, min_len=1)
    if said and len(said & content_words(row["reference"], min_len=1)) * 2 < len(said):
        return "answer_not_in_reference: fewer than half of the answer's words are in the reference"
    return None


def seed_columns(batch: pa.Table) -> pa.Table:
    """The LLM's reply as ``question``/``answer`` columns (null on rejected rows)."""
    q, a = [], []
    for s in batch.column("llm_output").to_pylist():
        obj = json.loads(s) if s else {}
        q.append(obj.get("question", "").strip() or None)
        a.append(obj.get("answer", "").strip() or None)
    batch = batch.append_column("question", pa.array(q, pa.string())).append_column("answer", pa.array(a, pa.string()))
    return batch.rename_columns([{"prompt_id": "seed_prompt_id", "model": "seed_model", "seed": "seed_seed"}.get(c, c)
                                 for c in batch.column_names])


# the columns every later row carries from its seed
SEED_COLUMNS = ["seed_id", "doc_id", "title", "chunk_ids", "reference", "truncated", "user_time", "user_location",
                "question", "answer", "seed_prompt_id", "seed_model"]
