"""RAGSynth variants of a base query: logical-complexity rewrites and clue completeness.

Rewrites (section 3.3): each base question is rewritten by up to ``per_question`` equivalence
transformations (one prompt file each: ``prompts/ragsynth/rewrite_<kind>.yaml``), drawn by a
seeded hash so reruns agree. A rewrite keeps the answer and the citations, so a judge must
confirm that it still asks for them: by default the reference answer's log-likelihood under the
rewrite (given the cited evidence) may fall at most ``margin`` nats/token below the original's;
``judge: yes-no`` asks the model instead.

Clue completeness (section 3.4): for a query resting on p documents, one answer per non-empty
proper subset of them (2^p − 2, capped), written from the available clues only and saying what
is missing, and the empty set's refusal. With ``variants.answer: model`` the LLM writes that
answer (``ragsynth/partial_answer``: sentences citing the available facts, and one sentence on
what the facts do not tell), checked by :func:`check_partial_answer`; a reply that fails, or
``answer: template``, gives the available facts verbatim followed by ``missing_text``
(``answer_source: template``, the failure in ``meta.answer_fallback``). Each variant records the
chunks available to the generator (``references``) and its ``variant_kind``; its criteria are
the answer sentences to cover and the missing facts to acknowledge.
"""

from __future__ import annotations

import itertools
import json
import re

import pyarrow as pa

from pipelines.core.schema import REJECT_DETAIL, REJECT_REASON, dumps, stable_id
from pipelines.ragsynth.singlehop import EXAMPLE_STAGING, METHOD, clue_struct
from pipelines.stages.citations import compose, content_words
from pipelines.stages.judge import per_token, yes_probability

_NORM = re.compile(r"[^a-z0-9]+")


def _norm(q: str) -> str:
    return _NORM.sub(" ", q.lower()).strip()


def _meta(ex: dict) -> dict:
    return json.loads(ex["meta"]) if ex.get("meta") else {}


def _evidence(ex: dict) -> list[str]:
    """The facts a base example rests on (the rewrite judge's context)."""
    return list(dict.fromkeys(c["text"] for c in _used_clues(ex)))


# ----------------------------------------------------------------------------- rewrites
def rewrite_rows(batch: pa.Table, kinds: list[str], per_question: int, seed: int) -> pa.Table:
    """Per base example, the seeded first ``per_question`` kinds; the example rides along."""
    rows = []
    for ex in batch.to_pylist():
        chosen = sorted(kinds, key=lambda k: stable_id(seed, ex["example_id"], k))[:per_question]
        for kind in chosen:
            rows.append({"rewrite_key": f"{ex['example_id']}|{kind}", "example_id": ex["example_id"],
                         "rewrite_kind": kind, "question": ex["query"], "answer": ex["answer"],
                         "facts": _evidence(ex), "base_json": dumps(ex)})
    return pa.Table.from_pylist(rows) if rows else pa.table({"rewrite_key": pa.array([], pa.string())})


def check_rewrite(row: dict, reply: dict) -> str | None:
    q = reply["question"].strip()
    if not q.endswith("?"):
        return "not_a_question: the rewrite does not end with '?'"
    if _norm(q) == _norm(row["question"]):
        return "unchanged: the rewrite repeats the question"
    if not content_words(q) & content_words(row["question"] + " " + " ".join(row["facts"])):
        return "off_topic: the rewrite shares no content word with the question or its facts"
    if content_words(row["answer"]) and content_words(q) >= content_words(row["answer"]):
        return "leaks_answer: the rewrite contains the whole answer"
    return None


def judge_rows(batch: pa.Table, judge: str) -> pa.Table:
    """Scoring rows for each generated rewrite (and, for the likelihood judge, its original
    under the same evidence), keyed so that the pair can be grouped back together."""
    rows = []
    for r in batch.to_pylist():
        rewrite = json.loads(r["llm_output"])["question"].strip()
        common = {"rewrite_key": r["rewrite_key"], "context": "\n".join(r["facts"]), "original": r["question"],
                  "answer": r["answer"], "rewrite": rewrite, "rewrite_kind": r["rewrite_kind"],
                  "base_json": r["base_json"], "gen_prompt_id": r["prompt_id"], "gen_model": r["model"],
                  "gen_seed": r["seed"]}
        rows.append({**common, "score_key": r["rewrite_key"], "role": "rewrite", "question": rewrite})
        if judge == "likelihood":
            rows.append({**common, "score_key": f"{r['rewrite_key']}|original", "role": "original",
                         "question": r["question"]})
    return pa.Table.from_pylist(rows) if rows else pa.table({"score_key": pa.array([], pa.string())})


def decide_rewrite(group: pa.Table, judge: str, margin: float, threshold: float) -> pa.Table:
    """One rewrite's scored rows → its examples row, kept or rejected with the judge's figures."""
    rows = group.to_pylist()
    by_role = {r["role"]: r for r in rows}
    r = by_role.get("rewrite") or rows[0]
    base = json.loads(r["base_json"])
    out = {**{k: base.get(k) for k in ("method", "task", "answer", "answer_source", "citations", "positives",
                                        "references", "clues", "hop", "rubric")},
           "example_id": stable_id(METHOD, "rewrite", base["example_id"], r["rewrite_kind"], r["rewrite"]),
           "query": r["rewrite"], "variant_of": base["example_id"], "variant_kind": f"rewrite:{r['rewrite_kind']}",
           "stage": "ragsynth_rewrite_judge", "prompt_id": r["gen_prompt_id"], "model": r["gen_model"],
           "seed": r["gen_seed"]}
    verdict: dict = {"judge": judge}
    needed = ["rewrite", "original"] if judge == "likelihood" else ["rewrite"]
    failed = [role for role in needed if role not in by_role or by_role[role]["llm_output"] is None]
    if failed:
        reason = "judge_failed"
        verdict["failed"] = {role: (by_role[role]["reject_reason"] if role in by_role else "missing") for role in failed}
    elif judge == "likelihood":
        verdict.update(rewrite=round(per_token(json.loads(by_role["rewrite"]["llm_output"])), 4),
                       original=round(per_token(json.loads(by_role["original"]["llm_output"])), 4))
        reason = None if verdict["rewrite"] >= verdict["original"] - margin else "not_equivalent"
    else:
        verdict["p_yes"] = round(yes_probability(json.loads(by_role["rewrite"]["llm_output"])), 4)
        reason = None if verdict["p_yes"] >= threshold else "not_equivalent"
    out["meta"] = dumps({**_meta(base), "equivalence": verdict})
    return as_table([{**out, REJECT_REASON: reason, REJECT_DETAIL: dumps(verdict) if reason else None}])


# ----------------------------------------------------------------------------- clue completeness
def doc_subsets(docs: list[str], cap: int) -> list[tuple[str, ...]]:
    """Non-empty proper subsets of ``docs``, largest first (the most answerable), at most ``cap``."""
    subsets = [s for k in range(len(docs) - 1, 0, -1) for s in itertools.combinations(docs, k)]
    return subsets[:cap]


def _used_clues(ex: dict) -> list[dict]:
    used = set(_meta(ex).get("used_clues") or [])
    return [c for c in ex["clues"] if c["clue_id"] in used] or list(ex["clues"])


def partial_rows(batch: pa.Table, cap: int, run_root: str, min_support: float = 0.5) -> pa.Table:
    """Per base example resting on p ≥ 2 documents, one row per non-empty proper subset."""
    rows = []
    exs = batch.to_pylist()
    texts = sentence_texts(run_root, {s for ex in exs for c in _used_clues(ex) for s in c["sentence_ids"]})
    for ex in exs:
        clues = _used_clues(ex)
        docs = list(dict.fromkeys(c["doc_id"] for c in clues))
        if len(docs) < 2:
            continue
        for subset in doc_subsets(docs, cap):
            avail = [{**c, "sentences": [texts.get(s, "") for s in c["sentence_ids"]]}
                     for c in clues if c["doc_id"] in subset]
            rows.append({"variant_key": f"{ex['example_id']}|{'|'.join(subset)}", "example_id": ex["example_id"],
                         "question": ex["query"], "subset": list(subset), "facts": [c["text"] for c in avail],
                         "available_json": json.dumps(avail),
                         "missing": [c["text"] for c in clues if c["doc_id"] not in subset],
                         "n_missing_docs": len(docs) - len(subset), "min_support": min_support,
                         "base_json": dumps(ex)})
    return pa.Table.from_pylist(rows) if rows else pa.table({"variant_key": pa.array([], pa.string())})


def sentence_texts(run_root: str, ids: set[str]) -> dict[str, str]:
    import pyarrow.dataset as pads

    if not ids:
        return {}
    t = pads.dataset(f"{run_root}/sentences", format="parquet").to_table(
        columns=["sentence_id", "text"], filter=pads.field("sentence_id").isin(sorted(ids)))
    return dict(zip(t.column(0).to_pylist(), t.column(1).to_pylist()))


_GAP = frozenset("not no nor cannot can't don't doesn't isn't missing unknown neither lack lacks lacking "
                 "without absent unclear unanswered none nothing".split())


def check_partial_answer(row: dict, reply: dict) -> str | None:
    """A partial answer must rest on the available facts only and say what is missing:

    - its sentences cite available facts (numbers in range) and are supported by the sentences
      those facts come from (:func:`~pipelines.stages.citations.compose`, ``min_support``);
    - ``missing`` says that something is missing (a negation or gap word), is about the question
      (shares a content word with it) and states none of the missing facts (no content word that
      only they have: the model was not shown them, so such a word is an invented answer), and
      neither does an answer sentence.
    """
    composed = compose(reply["answer"], json.loads(row["available_json"]), row["min_support"])
    if "reason" in composed:
        return f"{composed['reason']}: {json.dumps(composed['detail'], ensure_ascii=False)[:160]}"
    missing = reply["missing"].strip()
    words = set(re.findall(r"[a-z']+", missing.lower()))
    if not words & _GAP and "n't" not in missing.lower():
        return "no_gap_stated: the missing sentence does not say that anything is missing"
    if not content_words(missing) & content_words(row["question"]):
        return "missing_off_topic: the missing sentence shares no content word with the question"
    known = content_words(row["question"] + " " + " ".join(row["facts"]))
    leaked = (content_words(missing) & content_words(" ".join(row["missing"]))) - known
    if leaked:
        return f"states_missing_fact: the missing sentence says {sorted(leaked)[:3]} from the missing documents"
    for a in reply["answer"]:
        if (content_words(a["sentence"]) & content_words(" ".join(row["missing"]))) - known:
            return "answers_missing_part: an answer sentence states a missing fact"
    return None


def partial_examples(batch: pa.Table, min_support: float, missing_text: str, run_root: str) -> pa.Table:
    """Partial rows → variant examples. The answer is the one the LLM wrote from the available
    facts (stage ``ragsynth_variant_answers``, ``answer_source: model``) where it passed its
    checks; otherwise the available facts, each citing its sentences, then ``missing_text``
    (``answer_source: template``). The partial question the LLM wrote for the subset (stage
    ``ragsynth_variants``) is attached when there is one."""
    rows = batch.to_pylist()
    keys = [r["variant_key"] for r in rows]
    questions = _replies(run_root, "ragsynth_variant_qa", keys)
    answers = _replies(run_root, "ragsynth_variant_answers", keys, rejects="ragsynth_variant_answers")
    out = []
    for r in rows:
        base = json.loads(r["base_json"])
        avail = json.loads(r["available_json"])
        ex = {"example_id": stable_id(METHOD, "partial", base["example_id"], *r["subset"]), "method": METHOD,
              "task": base["task"], "query": base["query"], "variant_of": base["example_id"],
              "variant_kind": "partial", "positives": base["positives"],
              "references": list(dict.fromkeys(c["chunk_id"] for c in avail)),
              "clues": [clue_struct(c) for c in avail], "hop": base["hop"], "stage": "ragsynth_variant_build",
              "prompt_id": None, "model": None, "seed": None}
        a = answers.get(r["variant_key"])
        composed, fallback = None, None
        if a and "reply" in a:
            composed = compose(a["reply"]["answer"], avail, min_support)
            if "reason" in composed:  # checked when written; only a changed min_support gets here
                fallback, composed = {"reason": composed["reason"]}, None
            else:
                missing, source = a["reply"]["missing"].strip(), "model"
                ex.update(a["lineage"])
        elif a:
            fallback = {"reason": a["reject_reason"]}
        if composed is None:
            composed = compose([{"sentence": c["text"], "facts": [i]} for i, c in enumerate(avail, start=1)],
                               avail, min_support)
            missing, source = missing_text.format(n=r["n_missing_docs"]), "template"
        if "reason" in composed:
            out.append({**ex, "citations": [], REJECT_REASON: composed["reason"], REJECT_DETAIL: dumps(composed["detail"])})
            continue
        q = questions.get(r["variant_key"])
        q = q if q and "reply" in q else None
        ex.update(answer=" ".join([s["text"] for s in composed["answer_sentences"]] + [missing]),
                  answer_source=source, citations=composed["citations"],
                  rubric=[{"kind": "cover", "text": s["text"]} for s in composed["answer_sentences"]]
                  + [{"kind": "acknowledge", "text": m} for m in r["missing"]],
                  meta=dumps({"answer_sentences": composed["answer_sentences"], "support": composed["support"],
                              "missing": missing, "available_docs": r["subset"],
                              **({"answer_fallback": fallback} if fallback else {}),
                              "partial_question": q["reply"]["question"].strip() if q else None,
                              "partial_question_lineage": q["lineage"] if q else None}))
        out.append({**ex, REJECT_REASON: None, REJECT_DETAIL: None})
    return as_table(out)


def _replies(run_root: str, table: str, keys: list[str], rejects: str | None = None) -> dict[str, dict]:
    """An LLM stage's replies by ``variant_key``: ``{"reply", "lineage"}``, or, for a row in
    ``rejects/<rejects>/``, ``{"reject_reason"}``."""
    from pathlib import Path

    import pyarrow.dataset as pads

    def read(path: Path, columns: list[str]) -> list[dict]:
        if not keys or not path.is_dir() or not any(path.glob("*.parquet")):
            return []
        return pads.dataset(path, format="parquet").to_table(
            columns=columns, filter=pads.field("variant_key").isin(keys)).to_pylist()

    out: dict[str, dict] = {}
    if rejects:
        for r in read(Path(run_root) / "rejects" / rejects, ["variant_key", "reject_reason"]):
            out[r["variant_key"]] = {"reject_reason": r["reject_reason"]}
    for r in read(Path(run_root) / table, ["variant_key", "llm_output", "prompt_id", "model", "seed"]):
        if r["llm_output"]:
            out[r["variant_key"]] = {"reply": json.loads(r["llm_output"]),
                                     "lineage": {k: r[k] for k in ("prompt_id", "model", "seed")}}
    return out


def refusal_examples(batch: pa.Table, text: str) -> pa.Table:
    """The empty set of documents: the generator sees none of them and must refuse."""
    out = []
    for base in batch.to_pylist():
        out.append({"example_id": stable_id(METHOD, "refusal", base["example_id"]), "method": METHOD,
                    "task": base["task"], "query": base["query"], "answer": text, "answer_source": "template",
                    "citations": [],
                    "positives": base["positives"], "references": [], "clues": [], "hop": base["hop"],
                    "variant_of": base["example_id"], "variant_kind": "refusal",
                    "rubric": [{"kind": "acknowledge", "text": c["text"]} for c in _used_clues(base)],
                    "meta": dumps({"answer_sentences": []}), "stage": "ragsynth_variants",
                    "prompt_id": None, "model": None, "seed": None, REJECT_REASON: None, REJECT_DETAIL: None})
    return as_table(out)


def as_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=EXAMPLE_STAGING)
