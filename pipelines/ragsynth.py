"""RAGSynth (Shen et al.): QA whose answers cite the exact source sentences.

Read top to bottom like the paper's figure (section 3, single-hop):

    chunks ──clues──▶ clues citing sentence numbers          (M2: clue → (document, sentence))
           ──qa────▶ question + answer sentences citing clues (M1: answer sentence → clue)
           ──cite──▶ citations = M2 ∘ M1, checked against the sentences table and for support

Every stage writes its table and its rejects; nothing is dropped silently.
"""

from __future__ import annotations

import json
import re

import pyarrow as pa

from actors.llm import llm_map
from pipelines.config import RunConfig
from pipelines.rundir import Run
from pipelines.schema import EXAMPLES, REJECT_DETAIL, REJECT_REASON, dumps, stable_id, staging

METHOD = "ragsynth"


# ----------------------------------------------------------------------------- stage inputs
def _clue_inputs(batch: pa.Table, max_sentences: int, max_clues: int, min_support: float) -> pa.Table:
    rows = []
    for r in batch.select(["chunk_id", "doc_id", "text", "sentences", "sentence_spans"]).to_pylist():
        spans = r["sentence_spans"][:max_sentences]
        rows.append({"chunk_id": r["chunk_id"], "doc_id": r["doc_id"],
                     "sentence_ids": r["sentences"][: len(spans)],
                     "sentences": [r["text"][s["start"]:s["end"]] for s in spans],
                     "max_clues": max_clues, "min_support": min_support})
    return pa.Table.from_pylist(rows)


# Prompts number sentences and clues from 1 (what models expect); the data model counts from 0.


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


def check_qa(row: dict, reply: dict) -> str | None:
    """The answer cites existing clues, and the question is a question about them."""
    n = len(row["clues"])
    for a in reply["answer"]:
        bad = [i for i in a["facts"] if not 1 <= i <= n]
        if bad:
            return f"citation_out_of_range: answer cites fact {bad[0]} of {n}"
    question = reply["question"].strip()
    if not question.endswith("?"):
        return "not_a_question: the question does not end with '?'"
    cited = " ".join(row["clues"][i - 1] for a in reply["answer"] for i in a["facts"])
    if not content_words(question) & content_words(cited):
        return "question_off_topic: the question shares no content word with the clues it rests on"
    return None


def _qa_inputs(batch: pa.Table) -> pa.Table:
    rows = []
    for r in batch.select(["chunk_id", "doc_id", "sentence_ids", "sentences", "llm_output"]).to_pylist():
        clues = json.loads(r["llm_output"])["clues"]
        for c in clues:  # to 0-based sentence indexes, the data model's
            c["sentences"] = [i - 1 for i in c["sentences"]]
        rows.append({"chunk_id": r["chunk_id"], "doc_id": r["doc_id"], "sentence_ids": r["sentence_ids"],
                     "sentences": r["sentences"], "clue_json": json.dumps(clues),
                     "clues": [c["fact"] for c in clues]})
    return pa.Table.from_pylist(rows)


# ----------------------------------------------------------------------------- citations
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("""a an the of and or to in on for with by from at as is are was were be been being
this that these those it its which who whom what when where why how do does did not no than then
there their they them he she his her we our you your i can could may might will would shall should
into about over under between also such more most other some any each all both""".split())


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 2}


def support(answer: str, cited: list[str]) -> float:
    """Fraction of the answer's content words found in the cited sentences (1.0 = all)."""
    words = content_words(answer)
    if not words:
        return 0.0
    source = content_words(" ".join(cited))
    return len(words & source) / len(words)


def resolve(row: dict, min_support: float, lineage: dict) -> dict:
    """Compose M1 (answer sentence → clue) with M2 (clue → sentence) into citations; reject the
    example if a reference does not resolve or an answer sentence is not supported."""
    qa = json.loads(row["llm_output"])
    clues = json.loads(row["clue_json"])
    sids, sents = row["sentence_ids"], row["sentences"]
    citations, answer_sents, scores = [], [], []
    for a in qa["answer"]:
        a["facts"] = [f - 1 for f in a["facts"]]  # to 0-based clue indexes
        if any(not 0 <= f < len(clues) for f in a["facts"]):
            return {"reason": "unresolved_citation", "detail": {"answer_sentence": a, "clues": clues}}
        cited_idx = sorted({s for f in a["facts"] for s in clues[f]["sentences"]})
        if not cited_idx or any(i >= len(sids) for i in cited_idx):
            return {"reason": "unresolved_citation", "detail": {"answer_sentence": a, "clues": clues}}
        score = support(a["sentence"], [sents[i] for i in cited_idx])
        scores.append(score)
        if score < min_support:
            return {"reason": "unsupported_answer",
                    "detail": {"answer_sentence": a["sentence"], "support": round(score, 3),
                               "cited": [sents[i] for i in cited_idx]}}
        answer_sents.append(a["sentence"].strip())
        for i in cited_idx:
            c = {"chunk_id": row["chunk_id"], "sentence_id": sids[i]}
            if c not in citations:
                citations.append(c)
    question = qa["question"].strip()
    return {"example": {
        "example_id": stable_id(METHOD, "single_hop", row["chunk_id"], question),
        "method": METHOD, "task": "single_hop", "query": question, "answer": " ".join(answer_sents),
        "citations": citations, "positives": [row["chunk_id"]], "references": [row["chunk_id"]],
        "clues": [{"clue_id": f"{row['chunk_id']}/k{i}", "text": c["fact"],
                   "sentence_ids": [sids[j] for j in c["sentences"]]} for i, c in enumerate(clues)],
        "hop": 1, "meta": dumps({"support": [round(s, 3) for s in scores],
                                 "answer_clues": [a["facts"] for a in qa["answer"]]}),
        **lineage}}


EXAMPLE_STAGING = staging(EXAMPLES)


def _build_examples(batch: pa.Table, min_support: float) -> pa.Table:
    out = []
    for row in batch.to_pylist():
        lineage = {"stage": "ragsynth_cite", "prompt_id": row["prompt_id"], "model": row["model"],
                   "seed": row["seed"]}
        res = resolve(row, min_support, lineage)
        if "example" in res:
            out.append({**res["example"], REJECT_REASON: None, REJECT_DETAIL: None})
        else:  # keep the query text in the reject so a person can see what was dropped
            qa = json.loads(row["llm_output"])
            out.append({"example_id": stable_id(METHOD, "single_hop", row["chunk_id"], qa["question"]),
                        "method": METHOD, "task": "single_hop", "query": qa["question"],
                        "answer": " ".join(a["sentence"] for a in qa["answer"]), "citations": [],
                        "positives": [row["chunk_id"]], **lineage,
                        REJECT_REASON: res["reason"], REJECT_DETAIL: dumps(res["detail"])})
    return pa.Table.from_pylist(out, schema=EXAMPLE_STAGING)


def _verify_against_sentences(run: Run) -> dict[str, int]:
    """Independent check of the written examples: every cited pair exists in sentences/."""
    import pyarrow.dataset as pads

    ex = run.read_arrow("examples", columns=["citations"])
    cited = {(c["chunk_id"], c["sentence_id"]) for cs in ex.column("citations").to_pylist() for c in cs}
    if not cited:
        return {"cited": 0, "missing": 0}
    found = set()
    chunk_ids = pa.array(sorted({c for c, _ in cited}))
    scan = pads.dataset(run.path("sentences"), format="parquet").to_batches(
        columns=["chunk_id", "sentence_id"], filter=pads.field("chunk_id").isin(chunk_ids))
    for b in scan:
        found.update(zip(b.column(0).to_pylist(), b.column(1).to_pylist()))
    return {"cited": len(cited), "missing": len(cited - found)}


# ----------------------------------------------------------------------------- the pipeline
def single_hop(run: Run, cfg: RunConfig, *, limit: int | None) -> None:
    rs, llm = cfg.ragsynth, cfg.llm
    search = cfg.prompt_search()
    chunk_fp = run.stage_record("dedupe")["fingerprint"]
    llm_fp = llm.model_dump(exclude={"concurrency", "batch_size", "num_cpus", "num_gpus"})

    with run.stage("ragsynth_clues", chunk_fp, limit, cfg.seed, llm_fp, rs.model_dump(), search) as rec:
        if rec is not None:
            chunks = run.read("chunks")
            n = run.count("chunks")
            if limit:
                wanted = set(run.sample_keys("chunks", "chunk_id", limit, cfg.seed))
                chunks = chunks.filter(lambda r: r["chunk_id"] in wanted)
                n = len(wanted)
            ds = run.resume(rec, chunks, "chunk_id").map_batches(_clue_inputs, fn_kwargs={"max_sentences": rs.max_sentences_per_chunk,
                                                             "max_clues": rs.max_clues,
                                                             "min_support": rs.min_support},
                                 batch_format="pyarrow")
            ds = llm_map(ds, llm=llm, prompt="ragsynth/clues", stage="ragsynth_clues", check=check_clues,
                         prompt_search=search, rows=n)
            run.commit(rec, ds, table="ragsynth_clues")

    with run.stage("ragsynth_qa", run.stage_record("ragsynth_clues")["fingerprint"]) as rec:
        if rec is not None:
            ds = run.resume(rec, run.read("ragsynth_clues"), "chunk_id").map_batches(_qa_inputs, batch_format="pyarrow")
            ds = llm_map(ds, llm=llm, prompt="ragsynth/qa", stage="ragsynth_qa", check=check_qa,
                         prompt_search=search, rows=run.count("ragsynth_clues"))
            run.commit(rec, ds, table="ragsynth_qa")

    with run.stage("ragsynth_cite", run.stage_record("ragsynth_qa")["fingerprint"], rs.min_support) as rec:
        if rec is not None:
            ds = run.read("ragsynth_qa").map_batches(_build_examples, fn_kwargs={"min_support": rs.min_support},
                                                     batch_format="pyarrow")
            run.commit(rec, ds, table="examples", schema=EXAMPLES)
            rec.extra["citations_checked"] = _verify_against_sentences(run)
    run.export_jsonl("examples", "examples.jsonl")
