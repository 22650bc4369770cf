"""`synthrag run prismrag` end to end on the real embedded model, with small budgets (2 critique
attempts, 2 regenerations: one stochastic, one revision): every stage's funnel adds up, every
attempt of both loops is kept with its scores, and the funnel in the manifest adds up too."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads
import pytest

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "corpus"
SETS = ["prismrag.distractor.max_attempts=2", "prismrag.strategize.budget=2", "prismrag.strategize.stochastic_attempts=1",
        "llm.max_retries=0", "prismrag.seed_qa.max_reference_words=120",
        "llm.max_tokens=160"]  # every reply's budget: the 135M model loops to the end of a 480-token one


def _rows(path: Path) -> list[dict]:
    return pads.dataset(path, format="parquet").to_table().to_pylist() if path.is_dir() else []


@pytest.fixture(scope="module")
def run_dir(ray_local, tmp_path_factory):
    from typer.testing import CliRunner

    import pipelines.cli.run  # noqa: F401  (registers the commands)
    from pipelines.cli.app import app

    out = tmp_path_factory.mktemp("prismrag") / "run"
    args = ["run", "prismrag", "--corpus", str(CORPUS), "--out", str(out), "--limit", "2"]
    for s in SETS:
        args += ["--set", s]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.slow
def test_prismrag_funnel_adds_up_and_every_attempt_is_kept(run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "done"
    stages = {s["name"]: s for s in manifest["stages"]}
    for s in stages.values():
        assert s["in"] == s["out"] + sum(s["rejected"].values()), s
    seeds = stages["prismrag_seed_qa"]
    assert seeds["in"] == 2
    f = stages["prismrag_examples"]["funnel"]
    assert f["seeds"] == {"references": 2, "kept": seeds["out"], "rejected": seeds["rejected"]}
    for task, rounds, cap in (("distractor", "prismrag_distractor_round_r", 2),
                              ("strategize", "prismrag_strategize_round_r", 2)):
        attempts = [a for r in range(1, cap + 1) for a in _rows(run_dir / f"{rounds}{r}")]
        assert len(attempts) == f[task]["attempts"]
        assert f[task]["seeds"] == seeds["out"]
        assert sum(f[task]["histogram"].values()) == seeds["out"]
        per_seed: dict[str, list[int]] = {}
        for a in attempts:
            per_seed.setdefault(a["seed_id"], []).append(a["attempt"])
        for ids in per_seed.values():
            assert sorted(ids) == list(range(1, len(ids) + 1)) and len(ids) <= cap
        # every attempt is in the kept example's meta or in the reject's detail, with its scores
        select = f"prismrag_{task}_select"
        kept = [json.loads(e["meta"])["attempts"] for e in _rows(run_dir / f"prismrag_{task}_examples")]
        dropped = [json.loads(r["reject_detail"])["attempts"] for r in _rows(run_dir / "rejects" / select)]
        assert sum(map(len, kept + dropped)) == len(attempts)
        assert stages[select]["in"] == seeds["out"]
        assert set(stages[select]["rejected"]) <= {f"{task}_budget_exhausted"}
    # the embedded model takes the small-model path: code writes and scores the distractors
    from pipelines.prismrag.distractor import CRITIQUE_ID, SUBSTITUTE_ID

    pool = stages["prismrag_entity_pool"]
    assert pool["out"] > 0 and sum(pool["entities"].values()) == pool["out"]
    for a in _rows(run_dir / "prismrag_distractor_round_r1"):
        assert a["gen_prompt_id"] == SUBSTITUTE_ID
        if a["status"] != "generation_error":
            assert a["critique_prompt_id"] == CRITIQUE_ID and a["distractor"] != a["reference"]
        if a["passed"]:
            assert min(a["relevance"], a["distraction"], a["format"]) >= 4 and a["distractor_answer"] != a["answer"]
    revised = [a for a in _rows(run_dir / "prismrag_strategize_round_r2")]
    assert all(a["mode"] == "revision" and a["gen_prompt_id"] in (None, "prismrag/revise@1+small") for a in revised)
    s = f["strategize"]["successes"]
    assert s["stochastic"] + s["revision"] == f["strategize"]["passed"]
    # the SFT export holds one record per kept example, in `train generator`'s format
    from training.chat_data import load_records

    n = stages["prismrag_examples"]["out"]
    assert len(load_records(run_dir)) == n == f["sft"]["distractor"] + f["sft"]["strategize"]
    assert "prismrag_examples" in (run_dir / "report.html").read_text()
