"""`synthrag run ragsynth` end to end with the real embedded models (the README demo), then both evaluators."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from pipelines.stages.citations import support

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "corpus"
# The README's first command: the demo config (the full pipeline with small caps)
CAPS = ["--config", str(CORPUS.parents[1] / "configs" / "demo.yaml")]
STAGES = ["read", "chunk", "dedupe", "sentences", "quality", "ragsynth_clues", "ragsynth_qa", "ragsynth_cite", "ragsynth_ner",
          "ragsynth_entities_llm", "ragsynth_entities", "ragsynth_bridges", "ragsynth_multihop",
          "ragsynth_multihop_cite", "ragsynth_single_doc_scores", "ragsynth_single_doc", "ragsynth_rewrite",
          "ragsynth_rewrite_scores", "ragsynth_rewrite_judge", "ragsynth_variants", "ragsynth_variant_answers",
          "ragsynth_variant_build",
          "ragsynth_examples", "embed", "index", "ragsynth_lists"]


def _table(path: Path) -> list[dict]:
    return pads.dataset(path, format="parquet").to_table().to_pylist() if path.is_dir() else []


@pytest.fixture(scope="module")
def run_dir(ray_local, tmp_path_factory):
    from typer.testing import CliRunner

    import pipelines.cli.run  # noqa: F401  (registers the commands)
    from pipelines.cli.app import app

    out = tmp_path_factory.mktemp("ragsynth") / "run"
    res = CliRunner().invoke(app, ["run", "ragsynth", "--corpus", str(CORPUS), "--out", str(out), *CAPS])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.slow
def test_every_stage_reports_a_funnel_that_adds_up(run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "done"
    assert [s["name"] for s in manifest["stages"]] == STAGES
    for s in manifest["stages"]:
        assert s["in"] == s["out"] + sum(s["rejected"].values()), s
        if sum(s["rejected"].values()):
            assert (run_dir / "rejects" / s["name"]).is_dir(), s["name"]
    stages = {s["name"]: s for s in manifest["stages"]}
    # the funnel says how many answers each source wrote, and why model answers fell back
    cite = stages["ragsynth_multihop_cite"]
    assert sum(cite["answer_source"].values()) == cite["out"] and set(cite["answer_source"]) <= {"model", "facts"}
    assert sum(cite["answer_fallback"].values()) <= cite["answer_source"].get("facts", 0)  # facts mode: no fallback
    assert sum(stages["ragsynth_variant_build"]["answer_source"].values()) == stages["ragsynth_variant_build"]["out"]
    by_source = stages["ragsynth_examples"]["answer_source"]
    assert sum(n for v in by_source.values() for n in v.values()) == stages["ragsynth_examples"]["out"]
    assert stages["ragsynth_bridges"]["out"] >= 1 and stages["ragsynth_bridges"]["graph"]["edges"] >= 1
    assert stages["ragsynth_multihop"]["in"] == stages["ragsynth_bridges"]["out"]
    assert stages["ragsynth_examples"]["citations_checked"]["missing"] == 0
    assert (run_dir / "report.html").is_file()
    # every LLM stage says where its time went: one call per row plus retries, prompt tokens,
    # and the share a reused prompt prefix spared (the prompts share their instructions)
    llm = {name: s["llm"] for name, s in stages.items() if "llm" in s}
    assert {"ragsynth_qa", "ragsynth_entities_llm", "ragsynth_rewrite"} <= set(llm)
    # the embedded model runs the small prompt variant: sentence clues (no LLM call), questions
    # from best-of-4 candidates, of which the funnel counts the one kept
    assert "llm" not in stages["ragsynth_clues"] and stages["ragsynth_clues"]["out"] >= 1
    assert stages["ragsynth_qa"]["llm"]["candidates"] == 4 * stages["ragsynth_qa"]["llm"]["calls"]
    assert sum(stages["ragsynth_qa"]["llm"]["tries"].values()) == stages["ragsynth_qa"]["out"]
    for name, c in llm.items():
        rows = stages[name]["in"]
        assert c["calls"] == rows + c["retries"] and c["calls"] >= rows, name
        assert 0 <= c["cached_prompt_tokens"] <= c["prompt_tokens"], name
        assert (c["prompt_tokens"] > 0 and c["seconds"] > 0) or rows == 0, name
    assert sum(c["cached_prompt_tokens"] for c in llm.values()) > 0


@pytest.mark.slow
def test_examples_cite_real_sentences_and_multi_hop_spans_documents(run_dir):
    examples = _table(run_dir / "examples")
    sentences = {(r["chunk_id"], r["sentence_id"]): r for r in _table(run_dir / "sentences")}
    for ex in examples:
        for c in ex["citations"]:
            assert (c["chunk_id"], c["sentence_id"]) in sentences
        if ex["variant_kind"] != "refusal":
            assert ex["citations"] and ex["rubric"], ex
            cited = [sentences[(c["chunk_id"], c["sentence_id"])]["text"] for c in ex["citations"]]
            meta = json.loads(ex["meta"])
            for s in meta["answer_sentences"]:
                assert support(s["text"], cited) >= 0.5
    multi = [ex for ex in examples if ex["task"] == "multi_hop" and ex["variant_kind"] is None]
    assert multi, "no multi-hop example survived"
    for ex in multi:
        docs = {sentences[(c["chunk_id"], c["sentence_id"])]["doc_id"] for c in ex["citations"]}
        assert len(docs) == ex["hop"] >= 2
        assert ex["model"] == "SmolLM2-135M-Instruct" and ex["prompt_id"].startswith("ragsynth/multihop_question@")  # demo: answer: facts
        # every p-document query has min(2^p - 2, cap) partial variants and a refusal
        variants = [v for v in examples if v["variant_of"] == ex["example_id"]]
        partial = [v for v in variants if v["variant_kind"] == "partial"]
        assert len(partial) == min(2 ** ex["hop"] - 2, 2)
        assert [v["references"] for v in variants if v["variant_kind"] == "refusal"] == [[]]
        for v in partial:
            assert set(v["references"]) < set(ex["positives"])
            assert {c["chunk_id"] for c in v["citations"]} <= set(v["references"])
            assert {r["kind"] for r in v["rubric"]} == {"cover", "acknowledge"}
    # who wrote each answer: the LLM (single-hop, multi-hop that verified, partial answers that
    # passed their checks), the facts verbatim (multi-hop fallback) or a template
    for ex in examples:
        assert ex["answer_source"] in (("model", "facts") if ex["variant_kind"] is None else
                                       ("model", "template") if ex["variant_kind"] == "partial" else
                                       ("template",) if ex["variant_kind"] == "refusal" else
                                       ("model", "facts")), ex
        if ex["task"] == "single_hop" and ex["variant_kind"] is None:
            assert ex["answer_source"] == "facts" and ex["prompt_id"] == "ragsynth/qa_question@1+small"
    # the demo shows every kind of RAGSynth example (issue 22's bar for the embedded default)
    kinds = {(ex["task"], (ex["variant_kind"] or "base").split(":")[0]) for ex in examples}
    assert {("single_hop", "base"), ("multi_hop", "base"), ("single_hop", "refusal")} <= kinds
    assert {k for _, k in kinds} >= {"base", "rewrite", "partial", "refusal"}
    ids = {ex["example_id"] for ex in examples}
    assert len(ids) == len(examples)
    assert all(ex["variant_of"] in ids for ex in examples if ex["variant_of"])


@pytest.mark.slow
def test_exports_lists_sft_and_beir(run_dir):
    examples = _table(run_dir / "examples")
    lists = _table(run_dir / "retrieval_lists")
    assert lists
    for r in lists:
        assert r["candidates"][0] == r["positive"] and r["query_type"] in ("original", "rewrite", "partial")
    records = [json.loads(line) for line in (run_dir / "exports" / "sft_ragsynth.jsonl").read_text().splitlines()]
    assert len(records) == len(examples)
    assert {r["variant_kind"] for r in records} >= {"full", "partial", "refusal"}
    for rec in records:
        assert rec["messages"][-1]["role"] == "assistant" and rec["messages"][-1]["content"]
        assert rec["answer_source"] in ("model", "facts", "template")
    beir = run_dir / "exports" / "beir"
    assert (beir / "corpus.jsonl").is_file() and (beir / "qrels" / "original.tsv").is_file()


@pytest.mark.slow
def test_rerun_skips_every_stage(run_dir):
    from typer.testing import CliRunner

    from pipelines.cli.app import app

    before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "examples").iterdir()}
    res = CliRunner().invoke(app, ["run", "ragsynth", "--corpus", str(CORPUS), "--out", str(run_dir), *CAPS])
    assert res.exit_code == 0, res.output
    assert res.output.count("up to date, skipped") == len(STAGES)
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "examples").iterdir()} == before


@pytest.mark.slow
def test_evaluators_on_the_runs_reference_answers(run_dir, tmp_path):
    from typer.testing import CliRunner

    import pipelines.cli.eval_generator  # noqa: F401
    import pipelines.cli.eval_retrieval  # noqa: F401
    from pipelines.cli.app import app

    res = CliRunner().invoke(app, ["eval", "generator", "--run", str(run_dir), "--answers",
                                   str(run_dir / "exports" / "ragsynth_reference_answers.jsonl"),
                                   "--out", str(tmp_path / "csg.json")])
    assert res.exit_code == 0, res.output
    csg = json.loads(res.stdout.strip().splitlines()[-1])
    assert csg["examples"] == len(_table(run_dir / "examples")) and csg["unanswered"] == 0
    assert csg["c_cite"] == 1.0  # the run's own answers cite exactly their references
    assert csg["c_comp"] >= 0.8 and 0.0 <= csg["csg"] <= 1.0
    assert set(csg["by_kind"]) >= {"full", "partial", "refusal"}
    assert set(csg["by_level"]) == {"full", "partial", "none"} and csg["c_under_un"] is not None
    assert json.loads((run_dir / "evals" / "csg_ragsynth_reference_answers.json").read_text())["csg"] == csg["csg"]
    per = [json.loads(x) for x in (tmp_path / "csg.examples.jsonl").read_text().splitlines()]
    assert len(per) == csg["examples"]

    res = CliRunner().invoke(app, ["eval", "retrieval", "--run", str(run_dir), "--model", "embedded"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert "original" in got and 0.0 <= got["original"]["p@3"] <= 1.0
    assert got["original"]["num_queries"] >= 1
