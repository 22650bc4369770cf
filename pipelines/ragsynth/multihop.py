"""RAGSynth multi-hop: entities → canonical ids → clue graph → bridges → questions → checks.

    clues ──NER (spaCy pool) + LLM entities/relations──▶ mentions
          ──resolution (names, aliases, embeddings, optional LLM)──▶ entities/ (canonical ids)
          ──graph (networkx: clues of different documents sharing an entity)──▶ bridges of 2-4 clues
            + the LLM's relations between the bridged entities, as clues (Fig. 1: relations as clues)
          ──multihop (LLM)──▶ question + answer sentences citing facts ──cite──▶ candidates
          ──single-document check──▶ a question one document answers alone is rejected

With ``answer: model`` (the default) the LLM writes the answer from the clues, each sentence
citing the facts it uses; the cite stage composes and verifies those citations (M2 ∘ M1, support)
and, where they fail, keeps the question with the facts answer instead (the bridge's facts
verbatim, each citing its own sentences), so a bad answer does not lose the bridge. Every
candidate records ``answer_source`` (``model`` or ``facts``) and, after a fallback, why in
``meta.answer_fallback``.

The single-document check asks the model with each document alone and with all of them. By
default (``question-likelihood``) it compares the log-likelihood of the question per token: if one
document makes the question at least as likely as all documents together (within
``single_doc_margin``), the question does not need the others. ``answer-likelihood`` does the same
with the reference answer (meaningful for model-written answers; facts-mode answers quote every
document, so they always favour all of them), and ``yes-no`` asks whether the document answers
the question (P(Yes) ≥ threshold), which suits large models. On HotpotQA bridge questions with
SmolLM2-135M, question likelihood favoured both gold documents over either alone for 75% of the
questions, and rejected 44% of controls (a gold document plus an unneeded one): a weak but real
filter; a larger model is needed for a strong one.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pyarrow as pa

from pipelines.core.schema import REJECT_DETAIL, REJECT_REASON, dumps, stable_id
from pipelines.ragsynth.singlehop import EXAMPLE_STAGING, METHOD, example_from
from pipelines.stages.citations import compose, content_words, support
from pipelines.stages.entities import coarse_label, normalise_name
from pipelines.stages.judge import per_token, yes_probability

MENTION_REF = pa.struct([("chunk_id", pa.string()), ("sentence_id", pa.string())])
ENTITIES = pa.schema([
    pa.field("entity_id", pa.string(), nullable=False),
    pa.field("name", pa.string(), nullable=False),
    pa.field("label", pa.string(), nullable=False),
    pa.field("canonical_id", pa.string(), nullable=False),
    pa.field("mentions", pa.list_(MENTION_REF), nullable=False),
    pa.field("sources", pa.list_(pa.string())),  # "ner" and/or "llm"
])


# ----------------------------------------------------------------------------- LLM entities
def entity_inputs(batch: pa.Table) -> pa.Table:
    from pipelines.ragsynth.singlehop import clue_records

    rows = []
    for r in batch.to_pylist():
        clues = clue_records(r)
        rows.append({"chunk_id": r["chunk_id"], "doc_id": r["doc_id"], "clue_json": json.dumps(clues),
                     "clues": [c["text"] for c in clues]})
    return pa.Table.from_pylist(rows)


def check_entities(row: dict, reply: dict) -> str | None:
    """Every entity name must be copied from the facts (no invented entities). Relation ends
    are only used where their names occur in a clue (see :func:`collect_mentions`)."""
    text = normalise_name(" ".join(row["clues"]))
    for e in reply["entities"]:
        if normalise_name(e["name"]) not in text:
            return f"ungrounded_entity: {e['name'][:60]!r} is not in the facts"
    return None


# ----------------------------------------------------------------------------- mentions → forms
def collect_mentions(ner_rows: list[dict], llm_rows: list[dict], clues: list[dict]) -> dict:
    """Surface forms ``(label, normalised name)`` with their names, mentions and sources, and
    each clue's forms.

    A clue mentions the NER entities of the sentences it cites, and the LLM entities (and
    relation ends) whose names occur in its text.
    """
    forms: dict[tuple[str, str], dict] = {}
    by_sentence: dict[str, set] = defaultdict(set)

    def add(name: str, label: str | None, chunk_id: str, sentence_id: str, source: str):
        lab = coarse_label(label) if label else None
        norm = normalise_name(name)
        if lab is None or len(norm) < 2:
            return None
        f = forms.setdefault((lab, norm), {"names": defaultdict(int), "mentions": [], "sources": set()})
        f["names"][name.strip()] += 1
        ref = {"chunk_id": chunk_id, "sentence_id": sentence_id}
        if ref not in f["mentions"]:
            f["mentions"].append(ref)
        f["sources"].add(source)
        return (lab, norm)

    for r in ner_rows:
        for m in r["mentions"]:
            key = add(m["text"], m["label"], r["chunk_id"], r["sentence_id"], "ner")
            if key:
                by_sentence[r["sentence_id"]].add(key)
    clue_forms: dict[str, set] = {c["clue_id"]: set() for c in clues}
    for c in clues:
        for sid in c["sentence_ids"]:
            clue_forms[c["clue_id"]] |= by_sentence.get(sid, set())
    by_chunk: dict[str, list[dict]] = defaultdict(list)
    for c in clues:
        by_chunk[c["chunk_id"]].append(c)
    for r in llm_rows:
        reply = json.loads(r["llm_output"])
        typed = [(e["name"], e["type"]) for e in reply["entities"]]
        known = {normalise_name(n): t for n, t in typed}
        typed += [(n, known.get(normalise_name(n), "OTHER")) for rel in reply["relations"]
                  for n in (rel["head"], rel["tail"])]
        for name, label in typed:
            for c in by_chunk.get(r["chunk_id"], []):
                if normalise_name(name) and normalise_name(name) in normalise_name(c["text"]):
                    for sid in c["sentence_ids"][:1]:
                        key = add(name, label, c["chunk_id"], sid, "llm")
                        if key:
                            clue_forms[c["clue_id"]].add(key)
    return {"forms": forms, "clue_forms": clue_forms}


def entity_rows(forms: dict, canonical: dict) -> list[dict]:
    rows = []
    for (label, norm), f in sorted(forms.items()):
        name = max(f["names"].items(), key=lambda kv: (kv[1], len(kv[0])))[0]
        rows.append({"entity_id": stable_id("form", label, norm), "name": name, "label": label,
                     "canonical_id": canonical[(label, norm)], "mentions": f["mentions"],
                     "sources": sorted(f["sources"])})
    return rows


# ----------------------------------------------------------------------------- relations → clues
def relation_clues(llm_rows: list[dict], min_support: float) -> list[dict]:
    """The LLM's relations (``ragsynth_llm_entities``) as clues: ``"head relation tail."`` read
    from the fact the relation cites, so M2 is that fact's sentences. A relation is kept only
    when both ends are named in its fact and its words are found in those sentences (support):
    a relation (and its own words: "founded", not "sold") is a clue only where the document
    states it."""
    out = []
    for r in llm_rows:
        if not r.get("llm_output"):
            continue
        facts = json.loads(r["clue_json"])
        seen = set()
        for j, rel in enumerate(json.loads(r["llm_output"])["relations"]):
            if not 1 <= rel["fact"] <= len(facts):
                continue
            src = facts[rel["fact"] - 1]
            head, tail = rel["head"].strip(), rel["tail"].strip()
            fact = normalise_name(src["text"])
            if not (normalise_name(head) and normalise_name(tail)) or normalise_name(head) == normalise_name(tail) \
                    or normalise_name(head) not in fact or normalise_name(tail) not in fact:
                continue
            text = f"{head} {rel['relation'].strip()} {tail}."
            said = content_words(rel["relation"])  # the relation's own words must be stated too
            if normalise_name(text) in seen or support(text, src["sentences"]) < min_support or \
                    (said and support(rel["relation"], src["sentences"]) < min_support):
                continue
            seen.add(normalise_name(text))
            out.append({"clue_id": f"{src['clue_id']}/r{j}", "chunk_id": src["chunk_id"], "doc_id": src["doc_id"],
                        "text": text, "sentence_ids": list(src["sentence_ids"]), "sentences": list(src["sentences"]),
                        "kind": "relation", "ends": [normalise_name(head), normalise_name(tail)]})
    return out


def bridge_relations(path_clues: list[dict], linking: set[str], relations: list[dict],
                     canonical_of: dict[str, set[str]], cap: int) -> list[dict]:
    """The relation clues of a bridge: read from a sentence of one of its clues, with an end that
    is one of the entities linking the bridge (relations between the bridged entities), at most
    ``cap``, those linking two bridged entities first."""
    sentences = {s for c in path_clues for s in c["sentence_ids"]}
    texts = {normalise_name(c["text"]) for c in path_clues}
    found = []
    for rel in relations:
        if not sentences & set(rel["sentence_ids"]) or normalise_name(rel["text"]) in texts:
            continue
        ends = [canonical_of.get(e, set()) & linking for e in rel["ends"]]
        if any(ends):
            texts.add(normalise_name(rel["text"]))
            found.append((-sum(1 for e in ends if e), len(found), rel))
    return [{k: v for k, v in rel.items() if k != "ends"} for *_, rel in sorted(found)[:cap]]


# ----------------------------------------------------------------------------- bridges → questions
def bridge_rows(paths: list[list[str]], clues: dict[str, dict], graph, names: dict[str, str],
                chunk_text: dict[str, str], relations: list[dict] | None = None,
                canonical_of: dict[str, set[str]] | None = None, max_relations: int = 0) -> list[dict]:
    """One row per bridge: its clues in path order, then the relation clues between its
    entities (see :func:`bridge_relations`), the entities that link them, the chunks.
    ``fact_kinds`` says which facts are clues and which are relations."""
    rows = []
    for path in paths:
        linking, ids = [], set()
        for a, b in zip(path, path[1:]):
            for e in graph.edges[a, b]["entities"]:
                ids.add(e)
                if names[e] not in linking:
                    linking.append(names[e])
        cs = [{**clues[c], "kind": "clue"} for c in path]
        if relations and max_relations:
            cs += bridge_relations(cs, ids, relations, canonical_of or {}, max_relations)
        rows.append({"bridge_id": stable_id("bridge", *path), "clue_json": json.dumps(cs),
                     "facts": [c["text"] for c in cs], "fact_kinds": [c["kind"] for c in cs],
                     "n_docs": len({c["doc_id"] for c in cs}), "bridge": " and ".join(linking[:3]),
                     "contexts": json.dumps({c["doc_id"]: chunk_text[c["chunk_id"]] for c in cs})})
    return rows


def check_question(row: dict, reply: dict) -> str | None:
    """A question about the facts that does not copy one of them (facts-mode answers) nor
    repeat the row's original ``question`` when it has one (partial questions)."""
    question = reply["question"].strip()
    if not question.endswith("?"):
        return "not_a_question: the question does not end with '?'"
    if row.get("question") and normalise_name(question) == normalise_name(row["question"]):
        return "unchanged: the question repeats the original"
    if not content_words(question) & content_words(" ".join(row["facts"])):
        return "question_off_topic: the question shares no content word with its facts"
    kinds = row.get("fact_kinds") or ["clue"] * len(row["facts"])
    for f in (f for f, k in zip(row["facts"], kinds) if k != "relation"):  # a relation may be asked about
        words = content_words(f)
        if words and words <= content_words(question):
            return "copies_fact: the question contains a whole fact"
    return None


def check_multihop(row: dict, reply: dict) -> str | None:
    """The single-hop checks over the bridge's facts, and every document is cited."""
    from pipelines.ragsynth.singlehop import check_qa

    err = check_qa({"clues": row["facts"]}, reply)
    if err:
        return err
    clues = json.loads(row["clue_json"])
    missing = {c["doc_id"] for c in clues} - {clues[i - 1]["doc_id"] for a in reply["answer"] for i in a["facts"]}
    if missing:
        return f"document_not_cited: the answer cites no fact of {len(missing)} of the {row['n_docs']} documents"
    return None


def facts_answer(clues: list[dict]) -> list[dict]:
    """The facts answer: each clue of the bridge (not its relations) an answer sentence citing itself."""
    return [{"sentence": c["text"], "facts": [i]} for i, c in enumerate(clues, start=1)
            if c.get("kind", "clue") != "relation"]


def verify_answer(row: dict, qa: dict, clues: list[dict], min_support: float) -> dict:
    """Compose and check a written multi-hop answer: the citations resolve (M2 ∘ M1), every
    sentence is supported by what it cites, every document is cited. ``compose``'s result, or
    ``{"reason", "detail"}``."""
    err = check_multihop(row, qa)
    if err:
        return {"reason": err.split(":", 1)[0], "detail": {"error": err}}
    composed = compose(qa["answer"], clues, min_support)
    if "reason" not in composed and len(composed["docs"]) < len({c["doc_id"] for c in clues}):
        composed = {"reason": "document_not_cited", "detail": {"docs_cited": composed["docs"]}}
    return composed


def build_candidates(batch: pa.Table, min_support: float) -> pa.Table:
    """Multi-hop replies → candidate examples. A model-written answer that fails
    :func:`verify_answer` is replaced by the facts answer (``answer_source: facts``, the failure
    in ``meta.answer_fallback``); only a facts answer that fails too is rejected."""
    out = []
    for row in batch.to_pylist():
        lineage = {"stage": "ragsynth_multihop_cite", "prompt_id": row["prompt_id"], "model": row["model"],
                   "seed": row["seed"]}
        qa, clues = json.loads(row["llm_output"]), json.loads(row["clue_json"])
        source, fallback = "facts", None
        if "answer" in qa:
            composed = verify_answer(row, qa, clues, min_support)
            if "reason" in composed:
                fallback = {"reason": composed["reason"], "detail": composed["detail"], "model_answer": qa["answer"]}
            else:
                source = "model"
        if source == "facts":
            qa["answer"] = facts_answer(clues)
            composed = compose(qa["answer"], clues, min_support)
            if "reason" not in composed and len(composed["docs"]) < len({c["doc_id"] for c in clues}):
                composed = {"reason": "document_not_cited", "detail": {"docs_cited": composed["docs"]}}
        if "reason" in composed:
            out.append({"example_id": stable_id(METHOD, "multi_hop", row["bridge_id"], qa["question"]),
                        "method": METHOD, "task": "multi_hop", "query": qa["question"],
                        "answer": " ".join(a["sentence"] for a in qa["answer"]), "citations": [], "positives": [],
                        **lineage, REJECT_REASON: composed["reason"], REJECT_DETAIL: dumps(composed["detail"])})
            continue
        meta = {"bridge": row["bridge"], "contexts": json.loads(row["contexts"]),
                "relation_clues": [c["clue_id"] for c in clues if c.get("kind") == "relation"]}
        if fallback:
            meta["answer_fallback"] = fallback
        ex = example_from(qa, clues, composed, task="multi_hop", lineage=lineage, id_parts=(row["bridge_id"],),
                          meta=meta, answer_source=source)
        out.append({**ex, REJECT_REASON: None, REJECT_DETAIL: None})
    return pa.Table.from_pylist(out, schema=EXAMPLE_STAGING)


# ----------------------------------------------------------------------------- single-document check
ALL = "*all*"


def single_doc_rows(batch: pa.Table) -> pa.Table:
    """Per candidate: one scoring row per document alone, and one with all documents."""
    rows = []
    for ex in batch.to_pylist():
        contexts = json.loads(ex["meta"])["contexts"]
        variants = [(d, text) for d, text in contexts.items()] + [(ALL, "\n\n".join(contexts.values()))]
        for doc, text in variants:
            rows.append({"score_key": f"{ex['example_id']}|{doc}", "example_id": ex["example_id"], "doc": doc,
                         "context": text, "question": ex["query"], "answer": ex["answer"],
                         "base_json": dumps({k: v for k, v in ex.items() if k not in (REJECT_REASON, REJECT_DETAIL)})})
    return pa.Table.from_pylist(rows) if rows else pa.table({"score_key": pa.array([], pa.string())})


def decide_single_doc(group: pa.Table, judge: str, margin: float, threshold: float) -> pa.Table:
    """One candidate's scored rows (each document alone, and all) → the example, kept or
    rejected as answerable from one document, with the figures in its detail."""
    rows = group.to_pylist()
    ex = json.loads(rows[0]["base_json"])
    failed = [r for r in rows if r["llm_output"] is None]
    if failed:
        reason = "judge_failed"
        detail: dict = {"failed": {r["doc"]: r["reject_reason"] for r in failed}}
    else:
        likelihood = judge.endswith("likelihood")
        score = per_token if likelihood else yes_probability
        sc = {r["doc"]: score(json.loads(r["llm_output"])) for r in rows}
        singles = {d: v for d, v in sc.items() if d != ALL}
        best_doc, best = max(singles.items(), key=lambda kv: kv[1])
        if ALL not in sc or not singles:
            reason = "judge_failed"
        elif likelihood:
            reason = "answerable_from_one_document" if best >= sc[ALL] - margin else None
        else:
            reason = "answerable_from_one_document" if best >= threshold else None
        detail = {"judge": judge, "scores": {d: round(v, 4) for d, v in sc.items()}, "document": best_doc}
    meta = json.loads(ex["meta"])
    meta.pop("contexts", None)  # the chunks are in the run; keep the example small
    ex.update(meta=dumps({**meta, "single_doc_check": detail}), stage="ragsynth_single_doc")
    return pa.Table.from_pylist([{**ex, REJECT_REASON: reason, REJECT_DETAIL: dumps(detail) if reason else None}],
                                schema=EXAMPLE_STAGING)
