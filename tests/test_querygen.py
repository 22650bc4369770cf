"""Query distillation: normalisation, false-negative flags, checks, and the pipeline on SciFact."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.dataset as pads
import pytest

from pipelines.querygen import (
    QuerygenConfig,
    check_query,
    false_negatives,
    load_examples,
    normalise_scores,
)


def test_normalisation_uses_percentiles_and_clips():
    lists = [[0.0, 1.0, 2.0], [3.0, 4.0, 100.0]]
    norm, lo, hi = normalise_scores(lists, 1, 99)
    flat = np.array([0, 1, 2, 3, 4, 100.0])
    assert lo == pytest.approx(np.percentile(flat, 1)) and hi == pytest.approx(np.percentile(flat, 99))
    assert all(0.0 <= x <= 1.0 for row in norm for x in row)
    assert norm[1][2] == 1.0 and norm[0][0] == 0.0  # clipped at both ends
    assert norm[0][1] == pytest.approx((1 - lo) / (hi - lo))
    assert normalise_scores([], 1, 99)[0] == []


def test_false_negative_flags_are_relative_to_the_positive():
    flags = false_negatives(["p", "a", "b", "c"], "p", [0.8, 0.5, 0.47, 0.9], 0.6)
    assert flags == [False, True, False, True]  # 0.6 * 0.8 = 0.48


def test_query_checks():
    check = check_query(20)
    row = {"text": "The pump must be primed before first use and never run dry at all."}
    assert check(row, {"query": "how to prime a pump"}) is None
    assert check(row, {"query": " ".join(["word"] * 20)}).startswith("too_long")
    assert check(row, {"query": "must be primed before first use and"}).startswith("copied_passage")
    row["examples"] = [{"passage": "x", "query": "Why Do Pumps Fail?"}]
    assert check(row, {"query": "why do pumps fail?"}).startswith("copied_example")
    # a small model's junk: an ellipsis, its instructions echoed, a question about an example's topic
    for junk in ("...", "You write search queries for passages.", "Where were the Olympic Games held?"):
        assert check(row, {"query": junk}).startswith("query_off_topic"), junk


def test_shipped_examples_cover_every_type_with_one_to_three_pairs():
    import yaml

    from pipelines.querygen.config import DEFAULT_EXAMPLES, QUERY_TYPES

    data = yaml.safe_load(DEFAULT_EXAMPLES.read_text())
    assert set(data) == set(QUERY_TYPES)
    for t in QUERY_TYPES:
        assert 1 <= len(data[t]) <= 3, t
        for ex in data[t]:
            assert set(ex) == {"passage", "query"} and ex["passage"].strip() and ex["query"].strip(), (t, ex)
            assert len(ex["query"].split()) < 20 and len(ex["passage"].split()) <= 60, (t, ex)
    assert all(ex["query"] == ex["query"].lower() for ex in data["user_style"])  # typed like a user
    assert load_examples(QuerygenConfig()) == {t: data[t] for t in QUERY_TYPES}  # user_style is few-shot too


@pytest.mark.parametrize("query_type", ["web_search", "question", "claim", "title", "keywords", "user_style"])
def test_every_prompt_renders_its_examples(query_type):
    """The stage's own path: rows carry the type's examples as JSON, the prompt renders each pair."""
    import pyarrow as pa

    import prompts
    from pipelines.querygen import _generation_rows, _parse_examples

    examples = load_examples(QuerygenConfig())  # user_examples empty: user_style still gets the file's
    batch = pa.Table.from_pylist([{"chunk_id": "c1", "text": "A passage about pumps."}])
    row = _parse_examples(_generation_rows(batch, [query_type], examples)).to_pylist()[0]
    user = prompts.load(f"querygen/{query_type}").messages(row)[-1]["content"]
    assert row["examples"] and row["examples"] == examples[query_type]
    for ex in examples[query_type]:
        assert f"Passage: {ex['passage']}\nQuery: {ex['query']}" in user
    assert user.rstrip().endswith('Passage: A passage about pumps.\nReply as JSON: {"query": "..."}')


def test_user_examples_replace_the_files_user_style():
    import prompts

    ex = load_examples(QuerygenConfig(user_examples=["cheap pump seal kit",
                                                     {"passage": "Seals wear out.", "query": "pump seal wear"}]))
    assert ex["user_style"] == [{"passage": "(a passage)", "query": "cheap pump seal kit"},
                                {"passage": "Seals wear out.", "query": "pump seal wear"}]
    assert ex["question"] == load_examples(QuerygenConfig())["question"]  # the other types keep the file's
    user = prompts.load("querygen/user_style").messages({"text": "x", "examples": ex["user_style"]})[-1]["content"]
    assert "Query: cheap pump seal kit" in user and "can dogs eat grapes" not in user
    with pytest.raises(ValueError, match=r"user_examples\[0\].*`query` must be non-empty"):
        load_examples(QuerygenConfig(user_examples=["  "]))


@pytest.mark.parametrize("text, match", [
    ("question: [just a string]\n", r"'question' example 1: expected a mapping"),
    ("question:\n  - passage: p\n", r"'question' example 1: missing `query`"),
    ("question:\n  - query: q\n", r"'question' example 1: missing `passage`"),
    ("question:\n  - {passage: p, query: ''}\n", r"'question' example 1: `query` must be non-empty"),
    ("question:\n  - {passage: p, querry: q, query: q}\n", r"'question' example 1: unknown key\(s\) \['querry'\]"),
    ("question: {passage: p, query: q}\n", r"examples for 'question' must be a list"),
    ("question:\n  - {passage: p, query: q}\nquestions:\n  - {passage: p, query: q}\n",
     r"unknown query type\(s\) \['questions'\]"),
    ("question:\n  - {passage: p, query: q}\nclaim: []\n", r"query type 'claim' has no examples"),
    ("question:\n  - {passage: p, query: q}\n", r"query type 'claim' has no examples"),
    ("question:\n  - {passage: p, query: " + "w " * 20 + "}\n", r"'question' example 1: the query has 20 words"),
    ("- just a list\n", r"expected a mapping of query type"),
])
def test_a_bad_examples_file_is_named_with_its_type(tmp_path, text, match):
    bad = tmp_path / "ex.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        load_examples(QuerygenConfig(examples_file=str(bad), query_types=["question", "claim"]))
    assert str(bad) in str(err.value)


def test_a_domain_examples_file_needs_only_the_requested_types(tmp_path):
    f = tmp_path / "ex.yaml"
    f.write_text("claim:\n  - {passage: 'Pumps need priming.', query: 'Pumps must be primed.'}\n")
    cfg = QuerygenConfig(examples_file=str(f), query_types=["claim"])
    assert load_examples(cfg) == {"claim": [{"passage": "Pumps need priming.", "query": "Pumps must be primed."}]}
    with pytest.raises(ValueError, match=r"'user_style' has no examples.*user_examples"):
        load_examples(cfg.model_copy(update={"query_types": ["claim", "user_style"]}))
    assert load_examples(QuerygenConfig(examples_file=str(f), query_types=["claim", "user_style"],
                                        user_examples=["pump priming how"]))["user_style"][0]["query"] == "pump priming how"
    with pytest.raises(ValueError, match="is not a file"):
        load_examples(QuerygenConfig(examples_file=str(tmp_path / "missing.yaml")))


# A small run: N = 5 passages of ~100 tokens (of 20 SciFact abstracts, ~90 chunks) x 2 query types, lists of
# K = 8 candidates (the method's 20 is the default); the teacher scores every query against its K
# candidates, so the LLM work is 10 generations + up to 80 scorings.
N, K = 3, 8  # passages, candidates per list
SMALL = ["--set", "querygen.query_types=[question,keywords]", "--set", "llm.batch_size=8", "--set", "llm.max_retries=1",
         "--set", f"querygen.top_k={K}", "--set", "ingest.chunk_tokens=100"]


@pytest.mark.slow
def test_run_querygen_on_scifact(ray_local, shared_data, tmp_path):
    from typer.testing import CliRunner

    import pipelines.cli.run  # noqa: F401
    from pipelines.cli.app import app

    corpus = tmp_path / "corpus.jsonl"
    with open(shared_data / "scifact" / "corpus.jsonl") as src:
        corpus.write_text("".join(next(src) for _ in range(20)))
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "querygen", "--corpus", str(corpus), "--out", str(out), "--limit", str(N), *SMALL])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    stages = {s["name"]: s for s in manifest["stages"]}
    for s in stages.values():
        assert s["in"] == s["out"] + sum(s["rejected"].values()), s
    gen, filt = stages["querygen_generate"], stages["querygen_filter"]
    assert gen["in"] == N * 2
    assert filt["in"] == gen["out"]
    assert set(filt["rejected"]) <= {f"source_not_in_top{K}", "teacher_prefers_other"}
    by_type = filt["by_type"]
    assert set(by_type) <= {"question", "keywords"}
    assert sum(d["generated"] for d in by_type.values()) == gen["in"]
    assert sum(d["kept"] for d in by_type.values()) == filt["out"]

    lists = pads.dataset(out / "retrieval_lists").to_table().to_pylist()
    assert lists, "no generated query survived both filters"
    assert len(lists) == stages["querygen_lists"]["out"] == filt["out"]
    filtered = {r["query_id"]: r for r in pads.dataset(out / "querygen_filtered").to_table().to_pylist()}
    for r in lists:
        assert len(r["candidates"]) == K and r["positive"] in r["candidates"]
        assert len(r["teacher_scores"]) == len(r["false_negative"]) == K
        assert all(0.0 <= s <= 1.0 for s in r["teacher_scores"])
        raw = filtered[r["query_id"]]["raw_scores"]
        assert int(np.argmax(raw)) == r["candidates"].index(r["positive"])  # teacher's rank 1
        assert r["false_negative"][r["candidates"].index(r["positive"])] is False
        assert len(r["query"].split()) < 20

    # the same run, now end to end: train on the lists, evaluate base vs trained on held-out
    # SciFact train queries judged within these documents (a BEIR folder); earlier stages are reused
    from pipelines.exports.beir import iter_corpus, load_qrels, load_queries, write_beir

    scifact = shared_data / "scifact"
    docs = [d for batch in iter_corpus(tmp_path) for d in batch]  # tmp_path/corpus.jsonl
    ids = {d["_id"] for d in docs}
    qrels = {q: {d: r for d, r in rel.items() if d in ids} for q, rel in load_qrels(scifact, "train").items()}
    qrels = {q: rel for q, rel in qrels.items() if rel}
    queries = {q: t for q, t in load_queries(scifact, "train").items() if q in qrels}
    beir = write_beir(tmp_path / "beir", docs, queries, qrels, split="dev")
    res = CliRunner().invoke(app, ["run", "querygen", "--corpus", str(corpus), "--out", str(out), "--limit", str(N), *SMALL, "--set", "querygen.train.enabled=true",
                                   "--set", "querygen.train.epochs=1", "--set", "querygen.train.batch_size=1",
                                   "--set", "querygen.train.negatives=3", "--set", "querygen.train.loss=combined",
                                   "--set", f"querygen.evaluate.beir={beir}", "--set", "querygen.evaluate.split=dev"])
    assert res.exit_code == 0, res.output
    assert "querygen_generate: up to date" in res.output and "querygen_lists: up to date" in res.output
    stages = {s["name"]: s for s in json.loads((out / "manifest.json").read_text())["stages"]}
    assert stages["querygen_train"]["in"] == len(lists) and stages["querygen_train"]["training"]["steps"] >= 1
    for s in stages.values():
        assert s["in"] == s["out"] + sum(s["rejected"].values()), s
    report = json.loads((out / "eval_retrieval.json").read_text())
    assert set(report["metrics"]) == {"base", "trained"}
    for m in report["metrics"].values():
        assert m["num_queries"] == len(queries) and 0.0 <= m["ndcg@10"] <= 1.0
    assert stages["querygen_eval"]["metrics"] == report["metrics"]

    # the trained retriever is a plain sentence-transformers model: loaded as one, it encodes the
    # vectors synthrag's evaluation encodes (queries and passages)
    from sentence_transformers import SentenceTransformer

    from actors.embedder import EmbedderSettings, encode_texts

    texts = [r["query"] for r in lists[:2]] + [d["text"] for d in docs[:2]]
    trained = SentenceTransformer(str(out / "retriever"), device="cpu")
    plain = trained.encode(texts, normalize_embeddings=True)
    ours = encode_texts(texts, kind="query", settings=EmbedderSettings(model=str(out / "retriever")))
    assert plain.shape == (4, 384) and np.allclose(plain, ours, atol=1e-5)
