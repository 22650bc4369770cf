"""`synthrag generate`: held-back chat records answered by a model through the actor pool."""

from __future__ import annotations

import json

import pytest

from pipelines.stages.generate import load_records


def test_load_records_holds_back_the_last_assistant_turn(tmp_path):
    path = tmp_path / "sft.jsonl"
    recs = [{"id": "a", "messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "Capital of France?"},
                                     {"role": "assistant", "content": "Paris."}]},
            {"messages": [{"role": "user", "content": "Say hi."}]}]
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    rows = load_records(path)
    assert rows[0]["record_id"] == "a" and rows[0]["reference"] == "Paris."
    assert [m["role"] for m in rows[0]["messages"]] == ["system", "user"]
    assert rows[1]["reference"] is None and rows[1]["record_id"] == "2"
    path.write_text('{"messages": "oops"}\n')
    with pytest.raises(ValueError, match="not a chat record"):
        load_records(path)


@pytest.mark.slow
def test_generate_command_answers_records(ray_local, tmp_path):
    from typer.testing import CliRunner

    import pipelines.cli.generate  # noqa: F401
    from pipelines.cli.app import app

    path = tmp_path / "held.jsonl"
    path.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                       {"role": "assistant", "content": a}]})
                              for q, a in [("What color is the sky on a clear day?", "Blue."),
                                           ("How many legs does a spider have?", "Eight.")]) + "\n")
    out = tmp_path / "pred.jsonl"
    res = CliRunner().invoke(app, ["generate", "--model", "embedded", "--data", str(path), "--out", str(out),
                                   "--max-tokens", "24"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["reference"] for r in rows] == ["Blue.", "Eight."]
    assert all(isinstance(r["prediction"], str) and r["prediction"] for r in rows)
    assert rows[0]["model"] == "SmolLM2-135M-Instruct"
