"""Assistant-only labels, truncation counting, packing and loading of SFT chat records."""

from __future__ import annotations

import json

import pytest
import torch

from training import chat_data as cd


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from actors.models import embedded_llm_dir

    return AutoTokenizer.from_pretrained(embedded_llm_dir())


MULTI_TURN = [
    {"role": "system", "content": "Answer from the context."},
    {"role": "user", "content": "Context: [1] Paris is in France.\nWhere is Paris? Reply OK first."},
    {"role": "assistant", "content": "OK. Paris is in France [1]."},
    {"role": "user", "content": "And the word OK, what is it?"},
    {"role": "assistant", "content": "OK is a reply."},
]


def _runs(ex):
    """Contiguous runs of labelled positions: [(start, end), ...]."""
    runs, start = [], None
    for i, lab in enumerate(ex["labels"] + [cd.IGNORE_INDEX]):
        if lab != cd.IGNORE_INDEX and start is None:
            start = i
        elif lab == cd.IGNORE_INDEX and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_mask_covers_exactly_the_assistant_tokens(tok):
    ex = cd.encode_chat(tok, MULTI_TURN)
    ids, labels = ex["input_ids"], ex["labels"]
    # The full sequence is exactly the chat template's rendering.
    assert tok.decode(ids) == tok.apply_chat_template(MULTI_TURN, tokenize=False)
    # Labelled tokens carry their own id; everything else is ignored.
    assert all(lab in (cd.IGNORE_INDEX, i) for lab, i in zip(labels, ids))
    runs = _runs(ex)
    # Two runs, one per assistant turn: the reply text and its end-of-turn token, nothing else
    # (no "<|im_start|>assistant\n" header, no user text, even though the user also says "OK").
    decoded = [tok.decode(ids[a:b]) for a, b in runs]
    assert decoded == ["OK. Paris is in France [1].<|im_end|>", "OK is a reply.<|im_end|>"]
    # Each run is exactly the tokens of the reply plus <|im_end|>, and it starts right after
    # the generation prompt (the header that add_generation_prompt renders).
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for (a, b), turn in zip(runs, (2, 4)):
        prompt = tok.apply_chat_template(MULTI_TURN[:turn], tokenize=False, add_generation_prompt=True)
        assert a == len(tok(prompt, add_special_tokens=False)["input_ids"])
        assert ids[b - 1] == im_end
        assert ids[a:b - 1] == tok(MULTI_TURN[turn]["content"], add_special_tokens=False)["input_ids"]
    n_assistant = sum(len(tok(m["content"], add_special_tokens=False)["input_ids"]) + 1
                      for m in MULTI_TURN if m["role"] == "assistant")
    assert sum(lab != cd.IGNORE_INDEX for lab in labels) == n_assistant


def test_truncation_is_counted_and_empty_examples_dropped(tok):
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]
    full_len = len(cd.encode_chat(tok, MULTI_TURN)["input_ids"])
    # Cut inside the second assistant turn: kept, counted as truncated.
    cut = len(cd.encode_chat(tok, MULTI_TURN[:4])["input_ids"]) + 4
    stats = cd.EncodeStats()
    out = cd.build_examples(tok, [MULTI_TURN, short], cut, stats)
    assert len(out) == 2 and all(len(e["input_ids"]) <= cut for e in out)
    assert stats.truncated == 1 and stats.truncated_tokens == full_len - cut
    # Cut before any assistant token: dropped, with its reason.
    stats = cd.EncodeStats()
    assert cd.build_examples(tok, [MULTI_TURN], 20, stats) == []
    assert stats.dropped == {"no_assistant_tokens_after_truncation": 1}
    assert stats.to_json()["records"] == 1


def test_packing_keeps_examples_apart(tok):
    """A packed row gives the same per-token loss as its examples run one by one."""
    from transformers import AutoModelForCausalLM

    from actors.models import embedded_llm_dir

    recs = [MULTI_TURN,
            [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
            [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]]
    examples = cd.build_examples(tok, recs, 512)
    rows = cd.pack(examples, 512)
    assert len(rows) == 1
    row = rows[0]
    assert len(row["input_ids"]) == sum(len(e["input_ids"]) for e in examples)
    assert sorted(row["labels"]) == sorted(x for e in examples for x in e["labels"])
    assert row["position_ids"].count(0) == 3
    assert len(cd.pack(examples, max(len(e["input_ids"]) for e in examples))) >= 2

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(embedded_llm_dir()).eval()
    model.config.use_cache = False  # as in training: a KV cache turns packed-mask detection off
    collate = cd.Collator(tok.pad_token_id)
    with torch.no_grad():
        packed = collate(rows)
        assert "attention_mask" not in packed
        n_packed = int((packed["labels"][:, 1:] != -100).sum())
        loss_packed = float(model(**packed).loss) * n_packed
        loss_sep = 0.0
        for e in examples:
            b = collate([e])
            loss_sep += float(model(**b).loss) * int((b["labels"][:, 1:] != -100).sum())
    assert loss_packed == pytest.approx(loss_sep, rel=1e-4)


def test_collator_pads_with_ignored_labels(tok):
    examples = cd.build_examples(tok, [MULTI_TURN, [{"role": "user", "content": "Hi"},
                                                    {"role": "assistant", "content": "Yo"}]], 512)
    b = cd.Collator(tok.pad_token_id)(examples)
    n0, n1 = (len(e["input_ids"]) for e in examples)
    assert b["input_ids"].shape == (2, max(n0, n1))
    assert b["attention_mask"].sum(1).tolist() == [n0, n1]
    assert (b["labels"][b["attention_mask"] == 0] == cd.IGNORE_INDEX).all()


def test_load_records_from_run_dir_counts_invalid(tmp_path):
    exports = tmp_path / "exports"
    exports.mkdir()
    good = {"messages": MULTI_TURN}
    lines = [json.dumps(good), json.dumps({"messages": [{"role": "user", "content": "x"}]}),
             "", json.dumps({"text": "no messages"})]
    (exports / "sft.jsonl").write_text("\n".join(lines) + "\n")
    from collections import Counter

    counts = Counter()
    recs = cd.load_records(tmp_path, counts)
    assert recs == [MULTI_TURN]
    assert counts["invalid_record"] == 2
    train, dev = cd.split_dev(list(range(10)), 0.2, seed=1)
    assert len(dev) == 2 and sorted(train + dev) == list(range(10))
    assert cd.split_dev(list(range(10)), 0.2, seed=1) == (train, dev)


def test_deepspeed_config_fills_batch_precision_and_offload():
    from training.sft import SFTConfig, deepspeed_config

    cfg = SFTConfig(data="x", out="y", deepspeed="zero3", batch_size=3, grad_accum=2,
                    offload_optimizer=True, offload_params=True)
    d = deepspeed_config(cfg, use_gpu=True, world=8)
    assert d["train_batch_size"] == 48 and d["train_micro_batch_size_per_gpu"] == 3
    assert d["bf16"] == {"enabled": True}
    assert d["zero_optimization"]["stage"] == 3
    assert d["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert d["zero_optimization"]["offload_param"]["device"] == "cpu"
    d2 = deepspeed_config(SFTConfig(data="x", out="y", deepspeed="zero2"), use_gpu=False, world=2)
    assert d2["bf16"] == {"enabled": False} and d2["zero_optimization"]["stage"] == 2
    assert "offload_optimizer" not in d2["zero_optimization"]
    assert not any(v == "auto" for v in d2.values())
    with pytest.raises(ValueError):
        SFTConfig(data="x", out="y", deepspeed="zero9")
    assert SFTConfig(data="x", out="y", lora=True).lr == 2e-4
