"""Source2Synth curation mechanics on the tiny random model: split → LoRA SFT on slice 0 (one
step, the real training/sft.py) → k tries per slice-1 question → curated set, funnel and exports."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from pipelines.core.run import KEEP, Run
from pipelines.core.schema import EXAMPLES, staging
from pipelines.source2synth.tables import Table, build_database, load_infos


def _examples(db) -> pa.Table:
    info = next(iter(load_infos(db).values()))
    rows = []
    for i in range(4):
        rows.append({"example_id": f"m{i}", "method": "source2synth", "task": "multi_hop",
                     "query": f"Where was the founder of company {i} born?", "answer": "Olsztyn",
                     "citations": [], "positives": ["a", "b"], "hop": 2, "reasoning": "" if i == 3 else "chain",
                     "meta": json.dumps({"passages": [{"title": "A", "text": f"Company {i} was founded by Marta."},
                                                      {"title": "B", "text": "Marta was born in Olsztyn."}]}),
                     **KEEP})
        rows.append({"example_id": f"t{i}", "method": "source2synth", "task": "table_qa",
                     "query": "Which city had 900 visitors?", "answer": "Olsztyn", "citations": [], "positives": [],
                     "sql": f'SELECT "city" FROM "{info.name}" WHERE "visitors" = 900', "reasoning": "r",
                     "meta": json.dumps({"db_path": str(db), "table_id": info.table_id, "table_name": info.name,
                                         "values": ["Olsztyn"]}), **KEEP})
    return pa.Table.from_pylist(rows, schema=staging(EXAMPLES))


@pytest.mark.slow
def test_curation_trains_on_slice0_and_filters_slice1_in_k_tries(ray_local, tiny_llm, tmp_path):
    from pipelines import source2synth as s2s
    from pipelines.registry import load_config
    from pipelines.stages.stage import build_stage
    from training.chat_data import load_records

    db = tmp_path / "tables.sqlite"
    build_database([Table("csv/1.csv", ["Year", "City", "Visitors"], [["2010", "Gdansk", "1,200"],
                                                                       ["2011", "Olsztyn", "900"]])], db)
    cfg = load_config(None, [f"source2synth.curation.base={tiny_llm}", "source2synth.curation.max_steps=1",
                             "source2synth.curation.tries=2", "source2synth.curation.max_tokens=24",
                             "llm.batch_size=8"])
    run = Run.open(tmp_path / "run", command="test", config={})
    ex = _examples(db)
    for task, (stage, table) in s2s.PARTS.items():
        part = ex.filter(pa.compute.equal(ex.column("task"), task))
        build_stage(run, stage, [], lambda part=part: part, table)
    s2s.split(run, cfg, ["multi_hop", "table_qa"])
    model = s2s.finetune(run, cfg)
    assert model is not None and (model / "config.json").is_file()
    s2s.filter_slice1(run, cfg, model)
    s2s.curated_set(run, cfg, True)
    s2s.exports(run, cfg)

    st = {s["name"]: s for s in run.manifest["stages"]}
    assert st["source2synth_split"]["slices"] == {"slice_0": {"multi_hop": 2, "table_qa": 2},
                                                  "slice_1": {"multi_hop": 2, "table_qa": 2}}
    assert st["source2synth_finetune"]["llmsynth"]["trained"] and st["source2synth_finetune"]["in"] == 4
    cur = st["source2synth_curate"]
    assert cur["in"] == 4 == cur["out"] + sum(cur["rejected"].values())
    assert cur["llm"]["calls"] >= 4 and cur["llm"]["calls"] <= 8  # at most k = 2 tries each
    for r in run.read_arrow("rejects/source2synth_curate").to_pylist() if cur["rejected"] else []:
        assert r["reject_reason"] and r["attempts"] == 2
    done = st["source2synth_curated"]
    assert done["rejected"] == {"used_for_llmsynth": 4} and done["out"] == cur["out"]
    ret = done["retention"]
    assert sum(v["examples"] for v in ret["slice_1"].values()) == 4
    assert sum(v["kept"] for v in ret["slice_1"].values()) == cur["out"]
    records = load_records(run.path("exports") / "sft_source2synth.jsonl")
    assert len(records) == done["out"]
    slice0 = load_records(run.path("source2synth") / "slice0_sft.jsonl")
    assert len(slice0) == 4 and all(json.loads(r[-1]["content"])["answer"] == "Olsztyn" for r in slice0)
