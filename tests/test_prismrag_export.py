"""PrismRAG's SFT export, read back by training/chat_data.py: both tasks' records, the loss only
on the assistant turn (strategy, reasoning and answer), the references in the seeded order, and
the task mix."""

from __future__ import annotations

import json

from pipelines.prismrag import export as sft
from tests.test_prismrag_loops import GEN, SEED, crit, run_distractor, run_strategize


def _examples():
    _, _, d = run_distractor([crit(5, 5, 5)])
    _, _, s = run_strategize([(4, 4)])
    return d, s


def test_records_read_back_with_the_loss_on_the_assistant_turn_only(tmp_path):
    from transformers import AutoTokenizer

    from actors.models import embedded_llm_dir
    from training.chat_data import IGNORE_INDEX, encode_chat, load_records

    d, s = _examples()
    path = sft.write_sft(tmp_path / "exports" / "sft_prismrag.jsonl", [sft.record(d), sft.record(s)])
    recs = load_records(tmp_path)  # a run directory: exports/sft*.jsonl, as `train generator --data RUN`
    assert len(recs) == 2
    by_task = {json.loads(line)["task"]: json.loads(line) for line in path.read_text().splitlines()}
    dist_msgs, strat_msgs = by_task["distractor"]["messages"], by_task["strategize"]["messages"]
    # distractor instance: golden and distractor both shown, in the order the example fixed
    user = dist_msgs[0]["content"]
    assert SEED["reference"] in user and GEN["distractor"] in user and SEED["question"] in user
    golden_first = json.loads(d["meta"])["golden_position"] == 0
    assert (user.index(SEED["reference"]) < user.index(GEN["distractor"])) == golden_first
    assert dist_msgs[-1] == {"role": "assistant", "content": f"## Answer: {SEED['answer']}"}
    reply = strat_msgs[-1]["content"]
    assert reply.startswith("## Strategy:\n- Find the pump") and "## Reasoning:\n- It is the P-200" in reply
    assert reply.endswith("## Answer: Gdansk")

    tok = AutoTokenizer.from_pretrained(embedded_llm_dir())
    enc = encode_chat(tok, strat_msgs)
    labelled = tok.decode([t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab != IGNORE_INDEX])
    assert labelled.startswith("## Strategy:") and "## Reasoning:" in labelled and "## Answer: Gdansk" in labelled
    assert SEED["reference"] not in labelled and "References" not in labelled  # no loss on the prompt


def test_mix_sets_the_share_of_distractor_records():
    recs = [{"id": f"d{i}", "task": "distractor"} for i in range(10)] + \
           [{"id": f"s{i}", "task": "strategize"} for i in range(30)]
    out, info = sft.mix(recs, 0.5, seed=0)
    assert sum(r["task"] == "distractor" for r in out) == 10 and sum(r["task"] == "strategize" for r in out) == 10
    assert info == {"dropped_by_mix": {"distractor": 0, "strategize": 20}}
    out, _ = sft.mix(recs, 0.1, seed=0)
    assert sum(r["task"] == "distractor" for r in out) == 3 and sum(r["task"] == "strategize" for r in out) == 30
    assert sft.mix(recs, None, seed=0)[0] == recs
    assert sft.mix(recs, 0.5, seed=0)[0] == sft.mix(recs, 0.5, seed=0)[0]  # seeded
