"""`synthrag run source2synth` end to end on the real embedded models: the paragraphs of two
HotpotQA questions as the corpus, three WikiTableQuestions tables, small caps and one LoRA step."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads
import pytest

REQUIRED = {"multi_hop": ("query", "answer", "reasoning"), "table_qa": ("query", "answer", "sql", "reasoning")}


def _table(path: Path) -> list[dict]:
    return pads.dataset(path, format="parquet").to_table().to_pylist() if path.is_dir() else []


def write_inputs(shared: Path, out: Path, questions: int = 2, tables: int = 3) -> tuple[Path, Path]:
    """A corpus of the context paragraphs of the first HotpotQA questions, and the first WTQ tables."""
    corpus, seen = out / "corpus.jsonl", set()
    with open(corpus, "w") as f:
        for line in (shared / "hotpotqa" / "dev_distractor_sample_a300.jsonl").read_text().splitlines()[:questions]:
            q = json.loads(line)
            for title, sents in zip(q["context"]["title"], q["context"]["sentences"]):
                if title not in seen:
                    seen.add(title)
                    f.write(json.dumps({"_id": title, "title": title, "text": "".join(sents)}) + "\n")
    table_file = out / "tables.jsonl"
    lines = (shared / "wikitablequestions" / "tables.jsonl").read_text().splitlines()[:tables]
    table_file.write_text("\n".join(lines) + "\n")
    return corpus, table_file


@pytest.fixture(scope="module")
def run_dir(ray_local, shared_data, tmp_path_factory):
    from typer.testing import CliRunner

    import pipelines.cli.run  # noqa: F401  (registers the commands)
    from pipelines.cli.app import app

    tmp = tmp_path_factory.mktemp("source2synth")
    corpus, tables = write_inputs(shared_data, tmp, questions=1, tables=3)
    out = tmp / "run"
    res = CliRunner().invoke(app, ["run", "source2synth", "--corpus", str(corpus), "--tables", str(tables),
                                   "--out", str(out), "--limit", "3", "--set", "llm.max_retries=0",
                                   # curation (LoRA fine-tune + k tries) on the tiny model: test_source2synth_curation.py
                                   "--set", "source2synth.curation.enabled=false",
                                   "--set", "source2synth.multihop.max_seeds=2"])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.slow
def test_funnel_adds_up_and_rejects_have_reasons(run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "done"
    stages = {s["name"]: s for s in manifest["stages"]}
    for name in ("source2synth_ner", "source2synth_seeds", "source2synth_q1", "source2synth_q2", "source2synth_merge",
                 "source2synth_mhqa", "source2synth_tables", "source2synth_facts", "source2synth_sql",
                 "source2synth_execute", "source2synth_table_question", "source2synth_tqa", "source2synth_split",
                 "source2synth_curated"):
        s = stages[name]
        assert s["in"] == s["out"] + sum(s["rejected"].values()), s
        if sum(s["rejected"].values()):
            for r in _table(run_dir / "rejects" / name):
                assert r["reject_reason"], r
    # each stage takes what the one before kept
    for a, b in (("source2synth_seeds", "source2synth_q1"), ("source2synth_q1", "source2synth_q2"),
                 ("source2synth_q2", "source2synth_merge"), ("source2synth_tables", "source2synth_facts"),
                 ("source2synth_facts", "source2synth_sql"), ("source2synth_sql", "source2synth_execute"),
                 ("source2synth_execute", "source2synth_table_question")):
        assert stages[b]["in"] == stages[a]["out"], (a, b)
    assert stages["source2synth_tables"]["tables_read"] == 3 and stages["source2synth_seeds"]["in"] <= 3
    assert stages["source2synth_split"]["in"] == stages["source2synth_mhqa"]["out"] + stages["source2synth_tqa"]["out"]
    for r in _table(run_dir / "rejects" / "source2synth_execute"):  # failed SQL carries the SQL and the error
        assert r["reject_reason"].startswith(("sql_", "seed_value_missing", "too_many_values"))
        assert json.loads(r["reject_detail"])["sql"]
    assert "source2synth_finetune" not in stages and "source2synth_curate" not in stages  # curation off
    assert stages["source2synth_curated"]["out"] == stages["source2synth_split"]["out"]  # every example kept
    funnel = stages["source2synth_curated"]["funnel"]
    assert funnel["multi_hop"]["seeds"] == stages["source2synth_seeds"]["out"]
    assert (run_dir / "source2synth" / "tables.sqlite").is_file()


@pytest.mark.slow
def test_survivors_have_their_fields_and_exports_read_back(run_dir):
    from collections import Counter

    from training.chat_data import load_records

    examples = _table(run_dir / "examples")
    for ex in examples:
        for field in REQUIRED[ex["task"]]:
            assert ex[field], (field, ex)
        meta = json.loads(ex["meta"])
        if ex["task"] == "multi_hop":
            assert {"q1", "q2", "doc_a", "doc_b", "seed_entity"} <= set(meta)
            assert meta["seed_entity"].lower() not in ex["query"].lower()
    sft = run_dir / "exports" / "sft_source2synth.jsonl"
    bad: Counter = Counter()
    assert len(load_records(sft, bad)) == len(examples) and not bad
    assert len((run_dir / "exports" / "source2synth_qa.jsonl").read_text().splitlines()) == len(examples)
