"""Source2Synth multi-hop QA from documents (paper §3.1, "Multi-hop question answering").

    chunks ──spaCy NER──▶ entity index (normalised name → chunks, by document)
    doc-A chunk ──seed: one of its entities, drawn at random (seeded), that another document
                  names (the index; a text search of the other chunks when the index has none)
    ──q1 (LLM, doc A)──▶ Q1 whose answer is the seed entity
    ──q2 (LLM, doc B)──▶ Q2 about the seed entity, its answer copied from B
    ──merge (LLM)──▶ one 2-hop question whose answer is Q2's; naming the entity is ``bridge_leaked``
    ──▶ example: query, answer, reasoning chain, Q1/Q2/A/B kept in ``meta``

Everything here is pure (rows in, rows out); the stages are wired in ``__init__``.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict

import pyarrow as pa

from pipelines.core.schema import (
    EXAMPLES,
    REJECT_DETAIL,
    REJECT_REASON,
    dumps,
    stable_id,
    staging,
)
from pipelines.stages.citations import content_words
from pipelines.stages.entities import coarse_label, normalise_name

METHOD = "source2synth"
TASK = "multi_hop"
EXAMPLE_STAGING = staging(EXAMPLES)


def _keep() -> dict:
    return {REJECT_REASON: None, REJECT_DETAIL: None}


def _reject(reason: str, detail) -> dict:
    return {REJECT_REASON: reason, REJECT_DETAIL: dumps(detail)}


def cut(text: str, n: int) -> str:
    """``text`` cut to ``n`` characters at a word boundary."""
    text = " ".join((text or "").split())
    if len(text) <= n:
        return text
    return text[:n].rsplit(" ", 1)[0] + " …"


def names_in(name: str, text: str) -> bool:
    """Whether ``text`` names ``name`` (normalised, whole words)."""
    n = normalise_name(name)
    return bool(n) and f" {n} " in f" {normalise_name(text)} "


# ----------------------------------------------------------------------------- seeds
def entity_index(mention_rows: list[dict], min_chars: int = 3) -> dict[str, dict]:
    """Normalised entity name → {"name", "label", "chunks": {chunk_id: doc_id}} over the chunks'
    NER mentions (numbers, dates and amounts are not bridge entities: :func:`coarse_label`)."""
    index: dict[str, dict] = {}
    for r in mention_rows:
        for m in r["mentions"] or []:
            norm = normalise_name(m["text"])
            if coarse_label(m["label"]) is None or len(norm) < min_chars:
                continue
            e = index.setdefault(norm, {"name": m["text"].strip(), "label": m["label"], "chunks": {}})
            e["chunks"][r["chunk_id"]] = r["doc_id"]
    return index


def choose_seeds(chunks_a: list[dict], index: dict[str, dict], all_chunks: list[dict], seed: int,
                 max_chars: int) -> list[dict]:
    """One seed row per doc-A chunk: a seeded random entity of A that another document names, and
    that document's chunk (B). Rows without one are rejects (``no_entity``, ``no_second_document``).

    The entity index decides first (``via: entity_index``); when none of A's entities is indexed
    in another document, a whole-word text search of the other chunks stands in for retrieval
    (``via: text_search``).
    """
    by_chunk: dict[str, list[str]] = defaultdict(list)
    for norm, e in index.items():
        for cid in e["chunks"]:
            by_chunk[cid].append(norm)
    text_of = {c["chunk_id"]: c for c in all_chunks}
    out = []
    for a in chunks_a:
        rng = random.Random(stable_id(seed, "seed", a["chunk_id"]))
        ents = sorted(set(by_chunk.get(a["chunk_id"], [])))
        base = {"seed_id": stable_id(METHOD, "seed", a["chunk_id"]), "chunk_a": a["chunk_id"], "doc_a": a["doc_id"],
                "title_a": a.get("title") or "", "passage_a": cut(a["text"], max_chars)}
        if not ents:
            out.append({**base, **_reject("no_entity", {"chunk_id": a["chunk_id"]})})
            continue
        bridged = [n for n in ents if any(d != a["doc_id"] for d in index[n]["chunks"].values())]
        via = "entity_index"
        if bridged:
            norm = rng.choice(bridged)
            others = sorted(c for c, d in index[norm]["chunks"].items() if d != a["doc_id"])
        else:
            via, norm, others = "text_search", None, []
            for cand in rng.sample(ents, len(ents)):
                pat = re.compile(r"\b" + re.escape(index[cand]["name"]) + r"\b", re.I)
                others = sorted(c["chunk_id"] for c in all_chunks
                                if c["doc_id"] != a["doc_id"] and pat.search(c["text"] or ""))
                if others:
                    norm = cand
                    break
            if norm is None:
                out.append({**base, **_reject("no_second_document",
                                              {"entities": [index[n]["name"] for n in ents][:10]})})
                continue
        b = text_of[rng.choice(others)]
        out.append({**base, "entity": index[norm]["name"], "label": index[norm]["label"], "via": via,
                    "chunk_b": b["chunk_id"], "doc_b": b["doc_id"], "title_b": b.get("title") or "",
                    "passage_b": cut(b["text"], max_chars), **_keep()})
    return out


# ----------------------------------------------------------------------------- LLM checks
def _question_shape(q: str) -> str | None:
    if not q.strip().endswith("?"):
        return "not_a_question: the question does not end with '?'"
    return None


def check_q1(row: dict, reply: dict) -> str | None:
    """Q1 asks about doc A and its answer is the seed entity, so it must not name it."""
    q = reply["question"]
    if err := _question_shape(q):
        return err
    if names_in(row["entity"], q):
        return f"answer_in_question: Q1 names its answer {row['entity']!r}"
    if not content_words(q) & content_words(row["passage_a"]):
        return "off_topic: Q1 shares no content word with document A"
    return None


def check_q2(row: dict, reply: dict) -> str | None:
    """Q2 names the seed entity; its answer is copied from doc B and is not the entity itself."""
    q, ans = reply["question"], reply["answer"].strip()
    if err := _question_shape(q):
        return err
    if not names_in(row["entity"], q):
        return f"entity_not_in_question: Q2 does not name {row['entity']!r}"
    if not names_in(ans, row["passage_b"]):
        return "answer_not_in_passage: Q2's answer is not in document B"
    if normalise_name(ans) == normalise_name(row["entity"]) or names_in(ans, q):
        return "answer_in_question: Q2's answer is the entity or is in the question"
    return None


def check_merge(row: dict, reply: dict) -> str | None:
    """The merged question must not name the bridge entity (the whole point of the first hop)."""
    q = reply["question"]
    if err := _question_shape(q):
        return err
    if bridge_leaked(q, row["entity"]):
        return f"bridge_leaked: the merged question names the bridge entity {row['entity']!r}"
    if names_in(row["a2"], q):
        return "answer_in_question: the merged question contains its answer"
    return None


def bridge_leaked(question: str, entity: str) -> bool:
    """The merged question still names the bridge entity (whole words, normalised)."""
    return names_in(entity, question)


# ----------------------------------------------------------------------------- rows between stages
def _outputs(batch: pa.Table, column: str) -> pa.Table:
    """Keep the previous LLM reply under ``column`` and drop the LLM columns for the next stage."""
    rows = []
    for r in batch.to_pylist():
        out = {k: v for k, v in r.items() if not k.startswith("llm_") and k not in (
            "stage", "prompt_id", "model", "seed", "attempts", REJECT_REASON, REJECT_DETAIL)}
        out[column] = r["llm_output"]
        rows.append(out)
    return pa.Table.from_pylist(rows)


def q2_inputs(batch: pa.Table) -> pa.Table:
    t = _outputs(batch, "q1_json")
    return t.append_column("q1", pa.array([json.loads(x)["question"] for x in t.column("q1_json").to_pylist()],
                                          pa.string()))


def merge_inputs(batch: pa.Table) -> pa.Table:
    t = _outputs(batch, "q2_json")
    replies = [json.loads(x) for x in t.column("q2_json").to_pylist()]
    t = t.append_column("q2", pa.array([r["question"] for r in replies], pa.string()))
    return t.append_column("a2", pa.array([r["answer"].strip() for r in replies], pa.string()))


def reasoning_chain(q1: str, entity: str, q2: str, a2: str) -> str:
    """The chain the merged question hides: hop 1 finds the bridge, hop 2 answers about it."""
    return f"{q1} {entity}. {q2} {a2}."


def build_examples(batch: pa.Table) -> pa.Table:
    """Merged questions → examples (answer = Q2's answer), with Q1, Q2, A, B and the chain."""
    out = []
    for r in batch.to_pylist():
        merged = json.loads(r["llm_output"])["question"].strip()
        meta = {"seed_entity": r["entity"], "entity_label": r["label"], "via": r["via"],
                "q1": r["q1"], "a1": r["entity"], "q2": r["q2"], "a2": r["a2"],
                "doc_a": r["doc_a"], "doc_b": r["doc_b"], "chunk_a": r["chunk_a"], "chunk_b": r["chunk_b"],
                "passages": [{"title": r["title_a"], "text": r["passage_a"]},
                             {"title": r["title_b"], "text": r["passage_b"]}]}
        out.append({"example_id": stable_id(METHOD, TASK, r["seed_id"], merged), "method": METHOD, "task": TASK,
                    "query": merged, "answer": r["a2"], "citations": [], "positives": [r["chunk_a"], r["chunk_b"]],
                    "references": [r["chunk_a"], r["chunk_b"]], "hop": 2,
                    "reasoning": reasoning_chain(r["q1"], r["entity"], r["q2"], r["a2"]),
                    "meta": dumps(meta), "stage": "source2synth_mhqa", "prompt_id": r["prompt_id"],
                    "model": r["model"], "seed": r["seed"], **_keep()})
    return pa.Table.from_pylist(out, schema=EXAMPLE_STAGING)
