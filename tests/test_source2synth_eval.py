"""`synthrag eval tableqa` and `synthrag eval multihop` on the shared WTQ and HotpotQA samples,
answered by the tiny random model (the mechanics: prompts, sandbox, scoring, table + JSON out)."""

from __future__ import annotations

import json


def test_eval_tableqa_sql_mode(ray_local, tiny_llm, shared_data, tmp_path):
    mode = "sql"  # the sandboxed path; answer mode scores the same reply's answer field
    from typer.testing import CliRunner

    import pipelines.cli.eval_source2synth  # noqa: F401  (registers the commands)
    from pipelines.cli.app import app

    wtq = shared_data / "wikitablequestions"
    out = tmp_path / "tableqa.json"
    res = CliRunner().invoke(app, ["eval", "tableqa", "--model", str(tiny_llm), "--questions",
                                   str(wtq / "questions.tsv"), "--tables", str(wtq / "tables.jsonl"),
                                   "--mode", mode, "--limit", "3", "--max-tokens", "32", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads(out.read_text())
    assert summary["n"] == 3 and summary["mode"] == mode and 0 <= summary["accuracy"] <= 1
    assert any(line.startswith("accuracy ") for line in res.output.splitlines())  # the printed table
    per = [json.loads(line) for line in out.with_suffix(".examples.jsonl").read_text().splitlines()]
    assert len(per) == 3 and all(r["table_id"] for r in per)  # every question found its table
    assert summary["correct"] == sum(r["correct"] for r in per)


def test_eval_multihop(ray_local, tiny_llm, shared_data, tmp_path):
    from typer.testing import CliRunner

    import pipelines.cli.eval_source2synth  # noqa: F401
    from pipelines.cli.app import app

    out = tmp_path / "multihop.json"
    res = CliRunner().invoke(app, ["eval", "multihop", "--model", str(tiny_llm), "--data",
                                   str(shared_data / "hotpotqa" / "dev_distractor_sample_b300.jsonl"),
                                   "--passages", "gold", "--limit", "3", "--max-tokens", "32", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads(out.read_text())
    assert summary["n"] == 3 and {"em", "f1", "soft_em"} <= set(summary)
    assert all(0 <= summary[k] <= 1 for k in ("em", "f1", "soft_em"))
