"""`synthrag train retriever`: input shapes, and a 2-worker CPU run that is killed after its first
checkpoint, resumes from it when rerun, stops early and exports a loadable model.

The base model is a tiny BERT sentence-transformer built from a config (seconds per epoch).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.core.schema import RETRIEVAL_LISTS, to_table
from training.retriever import DataError, early_stopping, fixed_width, read_lists, split_by_query
from training.retriever_config import RetrieverSettings

REPO = Path(__file__).resolve().parents[1]
ANIMALS = ["cat", "dog", "owl", "fox", "bee", "eel", "elk", "yak", "ant", "bat", "cod", "emu"]
FACTS = ["eats fish", "sleeps at night", "lives in forests", "can swim", "has a long tail",
         "builds nests", "hunts mice", "migrates south"]


def tiny_sentence_transformer(path: Path) -> str:
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from actors.models import embedded_embedder_dir

    tok = AutoTokenizer.from_pretrained(str(embedded_embedder_dir()))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(path / "bert")
    tok.save_pretrained(path / "bert")
    SentenceTransformer(modules=[models.Transformer(str(path / "bert"), max_seq_length=64),
                                 models.Pooling(32, "mean")], device="cpu").save(str(path / "st"))
    return str(path / "st")


def list_rows(n_facts: int = 3) -> list[dict]:
    rnd = random.Random(0)
    rows = []
    for a in ANIMALS:
        for f in FACTS[:n_facts]:
            pos = f"The {a} {f}, a well known trait of the {a}."
            negs = [f"The {rnd.choice(ANIMALS)} {rnd.choice(FACTS)}." for _ in range(6)]
            cands = negs[:2] + [pos] + negs[2:]
            teacher = [round(rnd.random() * 0.5, 3) for _ in cands]
            teacher[2] = 1.0
            rows.append({"query": f"which animal {f} like the {a}?", "positive": pos,
                         "candidates": cands, "teacher_scores": teacher})
    return rows


# ------------------------------------------------------------------ input shapes (no Ray)
def test_run_directory_and_inline_file_give_the_same_lists(tmp_path):
    inline = [{"query": "q1", "positive": "alpha text", "candidates": ["beta", "alpha text", "gamma"],
               "teacher_scores": [0.7, 1.0, 0.2], "false_negative": [False, False, True]}]
    (tmp_path / "lists.jsonl").write_text("\n".join(json.dumps(r) for r in inline))
    run = tmp_path / "run"
    (run / "chunks").mkdir(parents=True)
    (run / "retrieval_lists").mkdir()
    # only chunk_id and text are read from chunks/ (the other CHUNKS columns are not needed)
    pairs = (("c1", "alpha text"), ("c2", "beta"), ("c3", "gamma"), ("c4", "unused"))
    pq.write_table(pa.table({"chunk_id": [c for c, _ in pairs], "text": [t for _, t in pairs]}),
                   run / "chunks" / "part-0.parquet")
    lists = [{"query_id": "x", "query": "q1", "query_type": "keyword", "positive": "c1",
              "candidates": ["c2", "c1", "c3"], "teacher_scores": [0.7, 1.0, 0.2],
              "false_negative": [False, False, True], "labels": None}]
    pq.write_table(to_table(lists, RETRIEVAL_LISTS), run / "retrieval_lists" / "part-0.parquet")

    for path in (tmp_path / "lists.jsonl", run):
        rows = read_lists(path)
        assert rows[0]["texts"] == ["beta", "alpha text", "gamma"] and rows[0]["positive"] == 1
        # positive first; "beta" (0.7 > 0.6 × 1.0) is a teacher false negative, "gamma" is flagged.
        # The paper's scope: both stay in the list (listwise target), flagged as no negatives
        row = fixed_width(rows, negatives=3, fn_fraction=0.6, need_teacher=True).to_pylist()[0]
        assert row["passages"] == ["alpha text", "beta", "gamma", ""]
        assert row["valid"] == [True, True, True, False]
        assert row["false_negative"] == [False, True, True, False]
        assert row["teacher"] == pytest.approx([1.0, 0.7, 0.2, 0.0])
        # fn_scope "all": dropped from the list, so from every loss
        table = fixed_width(rows, negatives=3, fn_fraction=0.6, need_teacher=True, fn_scope="all")
        row = table.to_pylist()[0]
        assert row["passages"] == ["alpha text", "", "", ""]
        assert row["valid"] == [True, False, False, False]
        assert row["false_negative"] == [False] * 4
    # without the teacher threshold only the flagged candidate goes
    row = fixed_width(read_lists(run), negatives=1, fn_fraction=None, need_teacher=True,
                      fn_scope="all").to_pylist()[0]
    assert row["passages"] == ["alpha text", "beta"] and row["teacher"] == pytest.approx([1.0, 0.7])


def test_bad_inputs_fail_with_clear_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "positive": "p", "candidates": ["a", "b"]}))
    with pytest.raises(DataError, match="positive is not among the candidates"):
        read_lists(bad)
    bad.write_text(json.dumps({"query": "q", "positive": "a", "candidates": ["a", "b"],
                               "teacher_scores": [1.0]}))
    with pytest.raises(DataError, match="teacher_scores has 1 values for 2 candidates"):
        read_lists(bad)
    bad.write_text(json.dumps({"query": "q", "positive": "a", "candidates": ["a", "b"]}))
    with pytest.raises(DataError, match="no teacher_scores"):
        fixed_width(read_lists(bad), negatives=1, fn_fraction=0.6, need_teacher=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a run directory"):
        read_lists(tmp_path / "empty")


def test_several_sources_are_mixed_by_their_weights(tmp_path):
    from pydantic import ValidationError

    from training.retriever import mix_sources, prepare_data
    from training.retriever_config import RetrieverTrainConfig

    rows = list_rows()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    b.write_text("".join(json.dumps(r) + "\n" for r in rows[4:10]))
    mixed, summary = mix_sources([a, b], [2.0, 0.5], seed=0)
    assert [(s["lists"], s["used"]) for s in summary] == [(4, 8), (6, 3)]
    ids = [r["query_id"] for r in mixed]
    assert len(set(ids)) == 11  # every copy has its own id, each id names its source
    assert sum(i.startswith("0:") for i in ids) == 8 and sum(i.startswith("1:") for i in ids) == 3
    assert sum(i.endswith("#1") for i in ids) == 4  # the second copy of each list of a
    from_b = {r["query"] for r in mixed if r["query_id"].startswith("1:")}
    assert from_b <= {r["query"] for r in rows[4:10]} and len(from_b) == 3
    again = mix_sources([a, b], [2.0, 0.5], seed=0)[0]
    assert [r["query_id"] for r in again] == ids  # the sample is seeded
    assert mix_sources([a], None, seed=0)[0][0]["query_id"] == read_lists(a)[0]["query_id"]

    cfg = RetrieverTrainConfig(data=[a, b], data_weights=[2.0, 0.5], out=tmp_path / "o",
                               batch_size=4, negatives=3)
    data = prepare_data(cfg)
    assert data["n_train"] + data["n_dev"] == 11 and data["sources"] == summary
    assert RetrieverTrainConfig(data=a, out=tmp_path / "o").data == [a]  # one source, as before
    with pytest.raises(ValidationError, match="2 data sources"):
        RetrieverTrainConfig(data=[a, b], data_weights=[1.0], out=tmp_path / "o")
    with pytest.raises(ValidationError, match="must be > 0"):
        RetrieverTrainConfig(data=[a, b], data_weights=[1.0, 0.0], out=tmp_path / "o")


def test_split_is_by_query_and_deterministic():
    rows = [{"query_id": str(i), "query": f"q{i % 20}", "positive": 0, "texts": ["p", "n"],
             "ids": [1, 2], "teacher_scores": [1.0, 0.1], "false_negative": None, "labels": None}
            for i in range(60)]
    table = fixed_width(rows, negatives=1, fn_fraction=0.6, need_teacher=True)
    train, dev = split_by_query(table, dev_fraction=0.1, min_dev=1)
    again = split_by_query(table, dev_fraction=0.1, min_dev=1)[1]
    assert dev.column("query").to_pylist() == again.column("query").to_pylist()
    assert len(set(dev.column("query").to_pylist())) == 2
    assert not set(dev.column("query").to_pylist()) & set(train.column("query").to_pylist())
    assert train.num_rows + dev.num_rows == 60


# ------------------------------------------------------------------ preset and early stopping
TAMBER = {"loss": "combined", "lr": 2e-4, "batch_size": 4096, "epochs": 30, "dev_fraction": 0.1,
          "patience": 2, "negatives": 19, "fn_fraction": 0.6, "fn_scope": "contrastive",
          "tau": 0.01, "tau_student": 0.05, "tau_teacher": 0.3, "listwise_weight": 1.0,
          "contrastive_weight": 0.1}


def test_tamber_preset_resolves_to_the_paper_recipe_and_explicit_settings_win():
    got = RetrieverSettings(preset="tamber")
    assert {k: getattr(got, k) for k in TAMBER} == TAMBER
    mine = RetrieverSettings(preset="tamber", lr=1e-5, batch_size=64)
    assert (mine.lr, mine.batch_size, mine.epochs) == (1e-5, 64, 30)
    assert RetrieverSettings.model_validate(mine.model_dump()) == mine  # a recorded config re-reads
    plain = RetrieverSettings()  # the small-data defaults stay the default
    assert (plain.preset, plain.lr, plain.batch_size, plain.epochs) == (None, 2e-5, 32, 3)
    assert plain.fn_scope == "contrastive"


def test_cli_preset_fills_what_the_command_line_does_not_give(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import pipelines.cli.train_retriever  # noqa: F401  (registers the command)
    import training.retriever
    from pipelines.cli.app import app

    seen = []

    def fake_train(cfg, address=None):
        seen.append(cfg)
        return {"best_epoch": 1, "best_dev_loss": 0.5, "stopped_early": False, "epochs_run": 1,
                "steps": 1, "starts": [1]}

    monkeypatch.setattr(training.retriever, "train_retriever", fake_train)
    args = ["train", "retriever", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "o")]
    for extra in (["--preset", "tamber"], ["--preset", "tamber", "--lr", "1e-5", "--epochs", "3",
                                           "--fn-scope", "all"], []):
        result = CliRunner().invoke(app, args + extra)
        assert result.exit_code == 0, result.output
    paper, overridden, default = seen
    assert paper.preset == "tamber" and {k: getattr(paper, k) for k in TAMBER} == TAMBER
    assert (overridden.lr, overridden.epochs, overridden.fn_scope) == (1e-5, 3, "all")
    assert overridden.batch_size == 4096 and overridden.patience == 2
    assert default.preset is None and (default.lr, default.batch_size) == (2e-5, 32)
    bad = CliRunner().invoke(app, args + ["--preset", "nope"])
    assert "preset = 'nope'" in str(bad.exception)


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience():
    def run(dev_losses, patience, min_delta=0.0):
        state = {"best_dev": None, "best_epoch": None, "bad_epochs": 0, "stopped_early": False}
        for epoch, dev in enumerate(dev_losses, 1):
            early_stopping(state, dev, epoch, patience=patience, min_delta=min_delta)
            if state["stopped_early"]:
                break
        return epoch, state

    # improves at 1, 2 and 4: no two bad epochs in a row, runs all 6, best epoch 5
    epochs, state = run([3.0, 2.0, 2.5, 1.5, 1.0, 1.2], patience=2)
    assert (epochs, state["best_epoch"], state["best_dev"], state["stopped_early"]) == (6, 5, 1.0, False)
    # epochs 3 and 4 fail to improve on epoch 2: stops after epoch 4, best epoch 2
    epochs, state = run([3.0, 2.0, 2.5, 2.1, 0.1], patience=2)
    assert (epochs, state["best_epoch"], state["best_dev"], state["stopped_early"]) == (4, 2, 2.0, True)
    assert run([3.0, 2.0, 2.5, 2.1, 0.1], patience=3)[0] == 5
    # a decrease below min_delta is no improvement; neither is a NaN dev loss
    assert run([3.0, 2.95, 2.9], patience=2, min_delta=0.1)[1]["best_epoch"] == 1
    assert run([3.0, float("nan"), float("nan")], patience=2)[0] == 3


# ------------------------------------------------------------------ the 2-worker run
# the real entry point (so Ray's relayed notices are filtered as for a user), under its name
CLI = "import sys; sys.argv[0] = 'synthrag'; from pipelines.cli import main; main()"


def _train_cmd(data: list[Path], base: str, out: Path) -> list[str]:
    sources = [a for d in data for a in ("--data", str(d))]
    return [sys.executable, "-c", CLI, "train", "retriever", *sources, "--base", base,
            "--out", str(out), "--workers", "2", "--batch-size", "8", "--chunk-size", "16",
            "--epochs", "10", "--lr", "1e-3", "--negatives", "5", "--loss", "combined",
            # no later epoch counts as an improvement: early stopping after epoch 1 + patience 2
            "--min-delta", "1e9"]


def test_two_worker_run_resumes_after_kill_stops_early_and_exports(tmp_path):
    from sentence_transformers import SentenceTransformer

    base = tiny_sentence_transformer(tmp_path / "base")
    rows = list_rows()  # in two sources (as two methods' runs would be), mixed as they are
    data = [tmp_path / "lists-a.jsonl", tmp_path / "lists-b.jsonl"]
    data[0].write_text("".join(json.dumps(r) + "\n" for r in rows[:20]))
    data[1].write_text("".join(json.dumps(r) + "\n" for r in rows[20:]))
    out = tmp_path / "out"
    env = {**os.environ, "SYNTHRAG_PROGRESS": "0", "RAY_AUTH_MODE": "disabled",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("RAY_ADDRESS", None)
    cmd = _train_cmd(data, base, out)

    # 1. start, and interrupt once Ray Train has registered the first checkpoint
    snapshot = out / "ray" / "retriever" / "checkpoint_manager_snapshot.json"
    with open(tmp_path / "run1.log", "w") as log:
        first = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        deadline = time.time() + 420
        while not snapshot.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert snapshot.exists(), (tmp_path / "run1.log").read_text()[-3000:]
        os.killpg(first.pid, signal.SIGINT)
        try:
            first.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert not (out / "metrics.json").exists()  # it did not finish

    # 2. the same command again: resumes from the checkpoint, early-stops, exports
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])  # the summary is the last line
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["starts"][0] == 1 and len(metrics["starts"]) == 2
    assert metrics["starts"][1] >= 2  # continued after the checkpoint, not from epoch 1
    assert metrics["stopped_early"] and metrics["epochs_run"] == 3 < 10
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert all(h["dev_loss"] > 0 and h["train_loss"] > 0 for h in metrics["history"])
    assert metrics["best_epoch"] == summary["best_epoch"] == 1
    assert metrics["steps"] == 3 * (32 // 8)  # 32 train lists, batches of 8 queries
    assert [(s["lists"], s["used"]) for s in metrics["sources"]] == [(20, 20), (16, 16)]

    # 3. the export is a sentence-transformers model with the best checkpoint's weights
    trained = SentenceTransformer(str(out), device="cpu")
    emb = trained.encode(["which animal eats fish like the cat?", "The cat eats fish."])
    assert emb.shape == (2, 32) and abs(emb).sum() > 0
    before = SentenceTransformer(base, device="cpu").encode(["The cat eats fish."])
    assert abs(emb[1] - before[0]).max() > 1e-4  # training changed the model


def test_cli_rejects_bad_input_before_starting_ray(tmp_path, monkeypatch, capsys):
    import cluster.runtime
    from pipelines.cli import main

    def invoke(argv):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        return exit_.value.code, capsys.readouterr().err

    connects = []
    monkeypatch.setattr(cluster.runtime, "connect", lambda *a, **k: connects.append(a))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "positive": "p", "candidates": ["a", "b"]}) + "\n")
    args = ["train", "retriever", "--data", str(bad), "--base", "embedded", "--out", str(tmp_path / "o")]
    code, err = invoke(args)
    assert code == 2 and "positive is not among the candidates" in err
    code, err = invoke(args + ["--loss", "triplet"])
    assert code == 2 and "loss = 'triplet'" in err
    assert connects == []  # bad input is refused before Ray is joined
