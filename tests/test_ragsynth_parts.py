"""RAGSynth multi-hop, rewrites, completeness variants and exports on recorded replies.

The model's replies here are written by hand (the stages' own logic is what is under test);
tests/test_ragsynth_pipeline.py runs the real embedded model end to end.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from pipelines.core.schema import EXAMPLES, dumps
from pipelines.ragsynth import multihop as mh
from pipelines.ragsynth import variants as var
from pipelines.ragsynth.export import lists_rows, retrieval_queries, sft_record

CLUES = [
    {"clue_id": "harbor#c0/k0", "chunk_id": "harbor#c0", "doc_id": "harbor",
     "text": "Harbor Instruments was founded in 1987 by Marta Kowalczyk.",
     "sentence_ids": ["harbor#c0:s1"], "sentences": ["Harbor Instruments was founded in 1987 by Marta Kowalczyk."]},
    {"clue_id": "marta#c0:s0/s", "chunk_id": "marta#c0", "doc_id": "marta",
     "text": "Marta Kowalczyk was born in 1958 in Elblag.",
     "sentence_ids": ["marta#c0:s0"], "sentences": ["Marta Kowalczyk was born in 1958 in Elblag."]},
]
BRIDGE = {"bridge_id": "b1", "clue_json": json.dumps(CLUES), "facts": [c["text"] for c in CLUES], "n_docs": 2,
          "bridge": "Marta Kowalczyk",
          "contexts": json.dumps({"harbor": "Harbor Instruments was founded in 1987 by Marta Kowalczyk.",
                                  "marta": "Marta Kowalczyk was born in 1958 in Elblag."})}
LINEAGE = {"prompt_id": "ragsynth/multihop_question@1", "model": "m", "seed": 0}
QUESTION = "Where was the founder of Harbor Instruments born?"


def _candidate(reply: dict) -> dict:
    out = mh.build_candidates(pa.Table.from_pylist([{**BRIDGE, **LINEAGE, "llm_output": json.dumps(reply)}]), 0.5)
    return out.to_pylist()[0]


def test_multihop_checks():
    assert mh.check_question(BRIDGE, {"question": QUESTION}) is None
    assert mh.check_question(BRIDGE, {"question": "Where was she born"}).startswith("not_a_question")
    assert mh.check_question(BRIDGE, {"question": "What is the weather like today?"}).startswith("question_off_topic")
    assert mh.check_question(BRIDGE, {"question": CLUES[1]["text"][:-1] + "?"}).startswith("copies_fact")
    one_doc = {"question": QUESTION, "answer": [{"sentence": "She was born in Elblag.", "facts": [2]}]}
    assert mh.check_multihop(BRIDGE, one_doc).startswith("document_not_cited")
    both = {"question": QUESTION, "answer": [{"sentence": "Its founder was born in Elblag.", "facts": [1, 2]}]}
    assert mh.check_multihop(BRIDGE, both) is None
    assert mh.check_multihop(BRIDGE, {**both, "answer": [{"sentence": "x", "facts": [3]}]}).startswith(
        "citation_out_of_range")


def test_facts_mode_candidate_cites_every_document():
    ex = _candidate({"question": QUESTION})
    assert ex["reject_reason"] is None and ex["task"] == "multi_hop" and ex["hop"] == 2
    assert ex["answer_source"] == "facts"
    assert ex["answer"] == " ".join(c["text"] for c in CLUES)
    assert ex["citations"] == [{"chunk_id": "harbor#c0", "sentence_id": "harbor#c0:s1"},
                               {"chunk_id": "marta#c0", "sentence_id": "marta#c0:s0"}]
    assert ex["positives"] == ["harbor#c0", "marta#c0"] == ex["references"]
    assert [r["kind"] for r in ex["rubric"]] == ["cover", "cover"]
    assert {c["doc_id"] for c in ex["clues"]} == {"harbor", "marta"}


def test_model_answer_is_kept_when_it_verifies_and_falls_back_to_facts_otherwise():
    good = _candidate({"question": QUESTION, "answer": [
        {"sentence": "Harbor Instruments was founded by Marta Kowalczyk.", "facts": [1]},
        {"sentence": "Marta Kowalczyk was born in Elblag.", "facts": [2]}]})
    assert good["reject_reason"] is None and good["answer_source"] == "model"
    assert good["answer"] == "Harbor Instruments was founded by Marta Kowalczyk. Marta Kowalczyk was born in Elblag."
    assert "answer_fallback" not in json.loads(good["meta"])
    facts = " ".join(c["text"] for c in CLUES)
    # an answer citing a fact that does not exist, one the cited sentences do not support, and one
    # that leaves a document uncited: each keeps the question with the facts answer
    for answer, reason in [
        ([{"sentence": "Its founder was born in Elblag.", "facts": [1, 7]}], "citation_out_of_range"),
        ([{"sentence": "The founder was born in Warsaw in 1901.", "facts": [1, 2]}], "unsupported_answer"),
        ([{"sentence": "Marta Kowalczyk was born in Elblag.", "facts": [2]}], "document_not_cited"),
    ]:
        ex = _candidate({"question": QUESTION, "answer": answer})
        assert ex["reject_reason"] is None and ex["answer_source"] == "facts", reason
        assert ex["answer"] == facts and ex["query"] == QUESTION
        assert len(ex["citations"]) == 2
        fb = json.loads(ex["meta"])["answer_fallback"]
        assert fb["reason"] == reason and fb["model_answer"] == answer


def _scored(ex: dict, scores: dict[str, float], judge="likelihood") -> pa.Table:
    rows = mh.single_doc_rows(pa.Table.from_pylist([ex], schema=pa.schema(
        [f for f in EXAMPLES] + [pa.field("reject_reason", pa.string()), pa.field("reject_detail", pa.string())])))
    out = []
    for r in rows.to_pylist():
        s = scores[r["doc"]]
        reply = {"logprobs": [s * 10], "tokens": [10]} if judge == "likelihood" else {"logprobs": [s, 0.0], "tokens": [1, 1]}
        out.append({**r, "llm_output": json.dumps(reply), "reject_reason": None})
    return pa.Table.from_pylist(out)


def test_single_document_check():
    ex = _candidate({"question": QUESTION})
    docs = {r["doc"] for r in mh.single_doc_rows(pa.Table.from_pylist([ex])).to_pylist()}
    assert docs == {"harbor", "marta", mh.ALL}
    kept = mh.decide_single_doc(_scored(ex, {"harbor": -1.3, "marta": -1.1, mh.ALL: -0.6}), "question-likelihood",
                                0.0, 0.5)
    row = kept.to_pylist()[0]
    assert row["reject_reason"] is None and "contexts" not in json.loads(row["meta"])
    assert json.loads(row["meta"])["single_doc_check"]["scores"][mh.ALL] == pytest.approx(-0.6)
    alone = mh.decide_single_doc(_scored(ex, {"harbor": -1.3, "marta": -0.55, mh.ALL: -0.6}), "answer-likelihood",
                                 0.0, 0.5)
    assert alone.to_pylist()[0]["reject_reason"] == "answerable_from_one_document"
    # the yes/no judge: P(yes) of any single document at or above the threshold rejects
    yes = mh.decide_single_doc(_scored(ex, {"harbor": 2.0, "marta": -2.0, mh.ALL: 3.0}, "yes-no"), "yes-no", 0.0, 0.5)
    assert yes.to_pylist()[0]["reject_reason"] == "answerable_from_one_document"


def _base() -> dict:
    ex = _candidate({"question": QUESTION})
    return {k: ex[k] for k in EXAMPLES.names}


def test_rewrite_rows_checks_and_likelihood_judge():
    base = _base()
    rows = var.rewrite_rows(pa.Table.from_pylist([base]), ["synonyms", "perspective", "detail"], 2, 0).to_pylist()
    assert len(rows) == 2 and len({r["rewrite_kind"] for r in rows}) == 2
    assert rows == var.rewrite_rows(pa.Table.from_pylist([base]), ["synonyms", "perspective", "detail"], 2, 0).to_pylist()
    row = rows[0]
    assert var.check_rewrite(row, {"question": "In which town was the person who started Harbor Instruments born?"}) is None
    assert var.check_rewrite(row, {"question": QUESTION.upper()}).startswith("unchanged")
    assert var.check_rewrite(row, {"question": "Is it sunny?"}).startswith("off_topic")

    rewrite = "In which town was the person who started Harbor Instruments born?"
    gen = {**row, "llm_output": json.dumps({"question": rewrite}), "prompt_id": "p", "model": "m", "seed": 0}
    scoring = var.judge_rows(pa.Table.from_pylist([gen]), "likelihood").to_pylist()
    assert {r["role"] for r in scoring} == {"rewrite", "original"}

    def decide(rw: float, orig: float):
        scored = [{**r, "llm_output": json.dumps({"logprobs": [(rw if r["role"] == "rewrite" else orig) * 4],
                                                  "tokens": [4]}), "reject_reason": None} for r in scoring]
        return var.decide_rewrite(pa.Table.from_pylist(scored), "likelihood", 0.5, 0.5).to_pylist()[0]

    kept = decide(-0.8, -0.5)
    assert kept["reject_reason"] is None and kept["query"] == rewrite and kept["variant_of"] == base["example_id"]
    assert kept["variant_kind"] == f"rewrite:{row['rewrite_kind']}"
    assert kept["citations"] == base["citations"] and kept["answer"] == base["answer"]
    assert kept["answer_source"] == base["answer_source"] == "facts"
    assert decide(-1.2, -0.5)["reject_reason"] == "not_equivalent"
    assert var.decide_rewrite(pa.Table.from_pylist([{**scoring[0], "llm_output": None, "reject_reason": "engine_error"}]),
                              "likelihood", 0.5, 0.5).to_pylist()[0]["reject_reason"] == "judge_failed"


def test_completeness_variants_cover_every_proper_subset(tmp_path):
    import pyarrow.parquet as pq

    assert var.doc_subsets(["a", "b", "c"], 10) == [("a", "b"), ("a", "c"), ("b", "c"), ("a",), ("b",), ("c",)]
    assert len(var.doc_subsets(["a", "b", "c", "d"], 100)) == 2 ** 4 - 2
    assert var.doc_subsets(["a", "b", "c"], 2) == [("a", "b"), ("a", "c")]

    (tmp_path / "sentences").mkdir()
    pq.write_table(pa.Table.from_pylist([{"sentence_id": c["sentence_ids"][0], "text": c["sentences"][0]} for c in CLUES]),
                   tmp_path / "sentences" / "part-0.parquet")
    base = _base()
    rows = var.partial_rows(pa.Table.from_pylist([base]), 6, str(tmp_path))
    assert rows.num_rows == 2  # 2^2 - 2
    out = var.partial_examples(rows, 0.5, "{n} more document(s) needed.", str(tmp_path)).to_pylist()
    for v in out:
        assert v["reject_reason"] is None and v["variant_kind"] == "partial" and v["variant_of"] == base["example_id"]
        assert v["answer_source"] == "template" and "answer_fallback" not in json.loads(v["meta"])
        assert len(v["references"]) == 1 and v["positives"] == base["positives"]
        assert v["answer"].endswith("1 more document(s) needed.")
        assert {c["chunk_id"] for c in v["citations"]} == set(v["references"])
        kinds = [r["kind"] for r in v["rubric"]]
        assert kinds == ["cover", "acknowledge"]
    refusal = var.refusal_examples(pa.Table.from_pylist([base]), "I cannot answer.").to_pylist()[0]
    assert refusal["references"] == [] and refusal["citations"] == [] and refusal["variant_kind"] == "refusal"
    assert refusal["answer_source"] == "template"
    assert [r["kind"] for r in refusal["rubric"]] == ["acknowledge", "acknowledge"]


def test_partial_answers_from_the_model_with_template_fallback(tmp_path):
    import pyarrow.parquet as pq

    (tmp_path / "sentences").mkdir()
    pq.write_table(pa.Table.from_pylist([{"sentence_id": c["sentence_ids"][0], "text": c["sentences"][0]} for c in CLUES]),
                   tmp_path / "sentences" / "part-0.parquet")
    base = _base()
    rows = var.partial_rows(pa.Table.from_pylist([base]), 6, str(tmp_path), 0.5)
    by_doc = {r["subset"][0]: r for r in rows.to_pylist()}
    harbor = by_doc["harbor"]  # Harbor's fact is available, Marta's birth place is missing
    good = {"answer": [{"sentence": "Harbor Instruments was founded by Marta Kowalczyk.", "facts": [1]}],
            "missing": "The facts do not say where Marta Kowalczyk was born."}
    assert var.check_partial_answer(harbor, good) is None
    bad = [({**good, "answer": [{"sentence": "It was founded in 1987.", "facts": [2]}]}, "unresolved_citation"),
           ({**good, "answer": [{"sentence": "The founder was born in Warsaw.", "facts": [1]}]}, "unsupported_answer"),
           ({**good, "missing": "Marta Kowalczyk founded the company."}, "no_gap_stated"),
           ({**good, "missing": "Nothing else is missing here."}, "missing_off_topic"),
           ({**good, "missing": "The facts do not say she was born in Elblag."}, "states_missing_fact")]
    for reply, reason in bad:
        assert var.check_partial_answer(harbor, reply).startswith(reason), reason

    # the LLM stage wrote the Harbor variant's reply and rejected the Marta variant's: the first
    # is the model's answer, the second falls back to the template and says why
    (tmp_path / "ragsynth_variant_answers").mkdir()
    pq.write_table(pa.Table.from_pylist([{"variant_key": harbor["variant_key"], "llm_output": json.dumps(good),
                                          "prompt_id": "ragsynth/partial_answer@1", "model": "m", "seed": 0}]),
                   tmp_path / "ragsynth_variant_answers" / "part-0.parquet")
    (tmp_path / "rejects" / "ragsynth_variant_answers").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"variant_key": by_doc["marta"]["variant_key"],
                                          "reject_reason": "states_missing_fact"}]),
                   tmp_path / "rejects" / "ragsynth_variant_answers" / "part-0.parquet")
    out = {v["references"][0]: v for v in var.partial_examples(rows, 0.5, "{n} more document(s) needed.",
                                                               str(tmp_path)).to_pylist()}
    model, template = out["harbor#c0"], out["marta#c0"]
    assert model["answer_source"] == "model" and model["prompt_id"] == "ragsynth/partial_answer@1"
    assert model["answer"] == ("Harbor Instruments was founded by Marta Kowalczyk. "
                               "The facts do not say where Marta Kowalczyk was born.")
    assert model["citations"] == [{"chunk_id": "harbor#c0", "sentence_id": "harbor#c0:s1"}]
    assert model["rubric"] == [{"kind": "cover", "text": "Harbor Instruments was founded by Marta Kowalczyk."},
                               {"kind": "acknowledge", "text": CLUES[1]["text"]}]
    assert json.loads(model["meta"])["missing"] == good["missing"]
    assert template["answer_source"] == "template" and template["answer"].endswith("1 more document(s) needed.")
    assert json.loads(template["meta"])["answer_fallback"] == {"reason": "states_missing_fact"}
    assert [r["kind"] for r in template["rubric"]] == ["cover", "acknowledge"]
    # the SFT record says who wrote its answer, and ends with the model's missing sentence
    rec = sft_record(model, {"harbor#c0": {"chunk_id": "harbor#c0", "title": None, "text": CLUES[0]["text"],
                                           "sentences": ["harbor#c0:s1"],
                                           "sentence_spans": [{"start": 0, "end": len(CLUES[0]["text"])}]}}, [], 0)
    assert rec["answer_source"] == "model"
    assert rec["messages"][2]["content"].endswith("[1] The facts do not say where Marta Kowalczyk was born.")


def test_export_lists_and_sft_record_numbering():
    base = _base()
    partial = {**base, "example_id": "p1", "variant_kind": "partial", "variant_of": base["example_id"],
               "references": ["harbor#c0"],
               "meta": dumps({"partial_question": "Who founded Harbor Instruments?", "missing": "More is needed.",
                              "answer_sentences": [{"text": CLUES[0]["text"], "sentence_ids": ["harbor#c0:s1"]}]})}
    refusal = {**base, "example_id": "r1", "variant_kind": "refusal", "references": [], "answer": "No."}
    queries = retrieval_queries([base, partial, refusal])
    assert [(q["query_type"], q["positives"]) for q in queries] == [
        ("original", ["harbor#c0", "marta#c0"]), ("partial", ["harbor#c0"])]
    lists = lists_rows(queries, [["marta#c0", "x", "y"], ["z"]], k=5)
    assert len(lists) == 3
    for r in lists:
        assert r["candidates"][0] == r["positive"] and r["labels"][0] == 1.0
    assert lists[0]["candidates"] == ["harbor#c0", "x", "y"]  # the other positive is never a negative

    chunks = {
        "harbor#c0": {"chunk_id": "harbor#c0", "title": "Harbor", "text": "Intro. " + CLUES[0]["text"],
                      "sentences": ["harbor#c0:s0", "harbor#c0:s1"],
                      "sentence_spans": [{"start": 0, "end": 6}, {"start": 7, "end": 7 + len(CLUES[0]["text"])}]},
        "marta#c0": {"chunk_id": "marta#c0", "title": None, "text": CLUES[1]["text"], "sentences": ["marta#c0:s0"],
                     "sentence_spans": [{"start": 0, "end": len(CLUES[1]["text"])}]},
        "noise": {"chunk_id": "noise", "title": None, "text": "Cats purr.", "sentences": ["noise:s0"],
                  "sentence_spans": [{"start": 0, "end": 10}]},
    }
    rec = sft_record(base, chunks, ["noise"], seed=0)
    assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant"]
    n = {sid: i for i, sid in enumerate(rec["sentence_ids"], start=1)}
    assert set(n) == {"harbor#c0:s0", "harbor#c0:s1", "marta#c0:s0", "noise:s0"}
    answer = rec["messages"][2]["content"]
    assert f"[{n['harbor#c0:s1']}]" in answer and f"[{n['marta#c0:s0']}]" in answer
    assert f"[{n['noise:s0']}]" not in answer and "Cats purr." in rec["messages"][1]["content"]
    part = sft_record(partial, chunks, [], seed=0)
    assert "Elblag" not in part["messages"][1]["content"] and part["messages"][2]["content"].endswith("More is needed.")
    none = sft_record(refusal, chunks, [], seed=0)
    assert "(no documents were retrieved)" in none["messages"][1]["content"] and none["sentence_ids"] == []


HARBOR_ENTITIES = {"chunk_id": "harbor#c0", "clue_json": json.dumps([CLUES[0]]), "llm_output": json.dumps({
    "entities": [{"name": "Marta Kowalczyk", "type": "PERSON"}, {"name": "Harbor Instruments", "type": "ORG"}],
    "relations": [{"head": "Marta Kowalczyk", "relation": "founded", "tail": "Harbor Instruments", "fact": 1},
                  {"head": "Marta Kowalczyk", "relation": "sold", "tail": "Harbor Instruments", "fact": 1},
                  {"head": "Marta Kowalczyk", "relation": "owns", "tail": "Acme", "fact": 1},
                  {"head": "Marta Kowalczyk", "relation": "founded", "tail": "Harbor Instruments", "fact": 3}]})}


def _relation_bridge() -> dict:
    import networkx as nx

    g = nx.Graph()
    g.add_edge(CLUES[0]["clue_id"], CLUES[1]["clue_id"], entities=["E_marta"])
    relations = mh.relation_clues([HARBOR_ENTITIES], 0.5)
    canonical_of = {"marta kowalczyk": {"E_marta"}, "harbor instruments": {"E_harbor"}}
    return mh.bridge_rows([[c["clue_id"] for c in CLUES]], {c["clue_id"]: c for c in CLUES}, g,
                          {"E_marta": "Marta Kowalczyk"}, {"harbor#c0": "h", "marta#c0": "m"}, relations,
                          canonical_of, max_relations=3)[0]


def test_relations_between_bridged_entities_become_clues():
    rels = mh.relation_clues([HARBOR_ENTITIES], 0.5)
    # only the relation the fact states: not an unsaid verb, an end not in the fact, a fact that is not there
    assert [r["text"] for r in rels] == ["Marta Kowalczyk founded Harbor Instruments."]
    assert rels[0]["sentence_ids"] == CLUES[0]["sentence_ids"] and rels[0]["doc_id"] == "harbor"
    row = _relation_bridge()
    assert row["facts"] == [c["text"] for c in CLUES] + ["Marta Kowalczyk founded Harbor Instruments."]
    assert row["fact_kinds"] == ["clue", "clue", "relation"] and row["n_docs"] == 2
    # a relation that links no bridged entity is not a clue of the bridge
    none = mh.bridge_relations([CLUES[0]], {"E_other"}, rels, {"marta kowalczyk": {"E_marta"}}, 3)
    assert none == []
    # a question may name a relation (it is what links the documents), not a whole clue
    assert mh.check_question(row, {"question": "Where was the woman who founded Harbor Instruments born?"}) is None

    def build(reply):
        return mh.build_candidates(pa.Table.from_pylist([{**row, **LINEAGE, "llm_output": json.dumps(reply)}]),
                                   0.5).to_pylist()[0]

    # the model's answer may cite the relation: it resolves to the sentence the relation was read from
    ex = build({"question": QUESTION, "answer": [
        {"sentence": "Marta Kowalczyk founded Harbor Instruments.", "facts": [3]},
        {"sentence": "She was born in 1958 in Elblag.", "facts": [2]}]})
    assert ex["answer_source"] == "model" and ex["reject_reason"] is None
    assert ex["citations"] == [{"chunk_id": "harbor#c0", "sentence_id": "harbor#c0:s1"},
                               {"chunk_id": "marta#c0", "sentence_id": "marta#c0:s0"}]
    assert [c["clue_id"] for c in ex["clues"]][-1] == "harbor#c0/k0/r0"
    assert json.loads(ex["meta"])["relation_clues"] == ["harbor#c0/k0/r0"]
    # the facts answer is the bridge's clues verbatim, not its relations
    facts = build({"question": QUESTION})
    assert facts["answer"] == " ".join(c["text"] for c in CLUES) and facts["answer_source"] == "facts"


def test_llm_entities_must_be_grounded_and_merge_with_ner_mentions():
    row = {"clues": [c["text"] for c in CLUES]}
    ok = {"entities": [{"name": "Marta Kowalczyk", "type": "PERSON"}, {"name": "Elblag", "type": "PLACE"}],
          "relations": [{"head": "Marta Kowalczyk", "relation": "born in", "tail": "Elblag", "fact": 2}]}
    assert mh.check_entities(row, ok) is None
    invented = {"entities": [{"name": "John Smith", "type": "PERSON"}], "relations": []}
    assert mh.check_entities(row, invented).startswith("ungrounded_entity")

    ner = [{"sentence_id": "harbor#c0:s1", "chunk_id": "harbor#c0", "doc_id": "harbor",
            "mentions": [{"text": "Harbor Instruments", "label": "ORG", "start": 0, "end": 18},
                         {"text": "1987", "label": "DATE", "start": 33, "end": 37},
                         {"text": "Marta Kowalczyk", "label": "PERSON", "start": 41, "end": 56}]}]
    llm = [{"chunk_id": "marta#c0", "llm_output": json.dumps(ok)}]
    found = mh.collect_mentions(ner, llm, CLUES)
    forms = found["forms"]
    assert ("PERSON", "marta kowalczyk") in forms and ("PLACE", "elblag") in forms
    assert not any(label == "DATE" for label, _ in forms)  # dates are not bridge entities
    assert forms[("PERSON", "marta kowalczyk")]["sources"] == {"ner", "llm"}
    assert found["clue_forms"]["harbor#c0/k0"] >= {("ORG", "harbor instruments"), ("PERSON", "marta kowalczyk")}
    assert ("PERSON", "marta kowalczyk") in found["clue_forms"]["marta#c0:s0/s"]


def test_example_configs_validate_and_bad_parts_are_refused():
    from pathlib import Path

    from pipelines.registry import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.glob("*.yaml"))
    assert files
    for f in files:
        load_config(f)
    assert load_config(root / "ragsynth.yaml").ragsynth.multihop.hops == [2, 3]
    with pytest.raises(ValueError, match="hops"):
        load_config(None, ["ragsynth.multihop.hops=[5]"])
    with pytest.raises(ValueError, match="unknown"):
        load_config(None, ["ragsynth.rewrites.kinds=[synonyms,poetry]"])
