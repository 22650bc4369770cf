"""Generator SFT end to end on CPU with 2 Ray Train workers: DDP (killed and resumed through
the CLI), DeepSpeed ZeRO-2 with LoRA, DeepSpeed ZeRO-3.

The base model is the suite's tiny Llama (the embedded model's real tokenizer and chat
template, random weights, 3.2M parameters), so each run takes seconds of compute and writes
checkpoints of MBs; the full model runs the same code in benchmarks/bench_sft.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
COMMON = ["--workers", "2", "--epochs", "2", "--batch-size", "2", "--max-length", "96"]


@pytest.fixture(scope="module")
def tiny_base(tiny_llm) -> Path:
    """The suite's tiny Llama (tests/conftest.py): the embedded model's tokenizer and chat
    template, 2 layers 64 wide, 3.2M parameters, so checkpoints are MBs, not the 0.5 GB a
    2-layer cut of SmolLM2 (28M parameters in its 576-wide embedding) wrote for every save."""
    return tiny_llm


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    """18 distinct grounded QA records (half multi-turn): 16 train, 2 dev."""
    facts = [("Aldoria", "Vemra"), ("Brisk", "Tolpan"), ("Cendra", "Oxhale"), ("Dunmere", "Pallis"),
             ("Eskar", "Quorin"), ("Fenwick", "Rastel"), ("Galoon", "Sivet"), ("Hollis", "Trune"),
             ("Irvak", "Ulmo")]
    path = tmp_path_factory.mktemp("sft") / "sft.jsonl"
    with open(path, "w") as fh:
        for i, (country, capital) in enumerate(facts):
            for multi in (False, True):
                msgs = [{"role": "system", "content": "Answer from the context; cite it."},
                        {"role": "user", "content": f"Context: [1] The capital of {country} is "
                                                    f"{capital}.\nWhat is the capital of {country}?"},
                        {"role": "assistant", "content": f"The capital of {country} is {capital} [1]."}]
                if multi:
                    msgs += [{"role": "user", "content": "Are you sure?"},
                             {"role": "assistant", "content": f"Yes, [1] says {capital}."}]
                fh.write(json.dumps({"messages": msgs}) + "\n")
    return path


def _dev_loss_of_export(out: Path) -> float:
    """Token-weighted loss of the exported model on the prepared dev rows."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    total = n = 0.0
    with torch.no_grad():
        for line in (out / "data" / "dev.jsonl").read_text().splitlines():
            row = json.loads(line)
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor([row["labels"]])
            k = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * k
            n += k
    return total / n


def _check_export(out: Path, metrics: dict) -> None:
    """The export is a plain transformers dir that loads, generates and is the trained model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = out / "model"
    assert (model_dir / "model.safetensors").exists() and (model_dir / "tokenizer.json").exists()
    assert not (model_dir / "adapter_config.json").exists()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of Brisk?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        gen = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] > prompt["input_ids"].shape[1]
    # Same dev loss as the last epoch measured inside training: the weights were gathered
    # (ZeRO-3), merged (LoRA) and saved correctly.
    assert _dev_loss_of_export(out) == pytest.approx(metrics["epochs"][-1]["dev_loss"], rel=2e-3)


def _assert_learned(metrics: dict, total_steps: int) -> None:
    assert metrics["global_step"] == total_steps
    assert [s["step"] for s in metrics["steps"]] == list(range(1, total_steps + 1))
    assert len(metrics["epochs"]) == 2
    assert metrics["epochs"][-1]["train_loss"] < metrics["epochs"][0]["train_loss"]
    assert metrics["steps"][-1]["loss"] < metrics["steps"][0]["loss"]
    data = metrics["data"]
    assert data["train"]["examples"] == 16 and data["dev"]["examples"] == 2
    assert data["train"]["truncated"] == 0


def _latest_checkpoint_step(ray_dir: Path) -> int:
    snap = ray_dir / "checkpoint_manager_snapshot.json"
    if not snap.exists():
        return 0
    try:
        latest = json.loads(snap.read_text()).get("latest_checkpoint_result")
    except json.JSONDecodeError:
        return 0
    if not latest:
        return 0
    state = ray_dir / latest["checkpoint_dir_name"] / "state.json"
    return json.loads(state.read_text())["global_step"] if state.exists() else 0


def _kill_session(pid: int) -> None:
    """SIGKILL the CLI process and everything it started (its local Ray included)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for _ in range(5):  # Ray may start helpers in their own process groups within the session
        rows = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
        mine = [int(p) for p, s in (r.split() for r in rows.splitlines() if r.strip())
                if s == str(pid)]
        for p in mine:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not mine:
            break
        time.sleep(1)


@pytest.fixture(scope="module")
def ddp_run(tiny_base, sft_data, tmp_path_factory) -> tuple[Path, int]:
    """The CLI run with plain DDP, SIGKILLed after its first checkpoint, then rerun to the end."""
    tmp = tmp_path_factory.mktemp("ddp")
    out = tmp / "out"
    cmd = [sys.executable, "-m", "pipelines.cli.train_generator", "train", "generator",
           "--data", str(sft_data), "--base", str(tiny_base), "--out", str(out), *COMMON,
           "--lr", "1e-3", "--checkpoint-every", "2"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", SYNTHRAG_PROGRESS="0", HF_HUB_OFFLINE="1")
    with open(tmp / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        ray_dir = out / "ray" / "sft"
        deadline = time.time() + 480
        try:
            while _latest_checkpoint_step(ray_dir) == 0:
                assert proc.poll() is None, (tmp / "first.log").read_text()[-3000:]
                assert time.time() < deadline, "no checkpoint within the time limit"
                time.sleep(0.2)
        finally:
            _kill_session(proc.pid)
            proc.wait()
    killed_at = _latest_checkpoint_step(ray_dir)
    assert 1 <= killed_at < 8
    assert not (out / "model").exists() and not (out / "metrics.json").exists()

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    return out, killed_at


def test_ddp_run_is_killed_resumes_and_exports(ddp_run):
    out, killed_at = ddp_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["engine"] == "ddp" and metrics["workers"] == 2
    first, resumed = metrics["sessions"]
    assert first["resumed_from"] == 0 and resumed["resumed_from"] >= killed_at
    assert resumed["steps"] == 8 - resumed["resumed_from"]
    _assert_learned(metrics, total_steps=8)
    _check_export(out, metrics)


def test_deepspeed_zero2_with_lora(ray_local, tiny_base, sft_data, tmp_path):
    from safetensors import safe_open

    from training.sft import SFTConfig, train

    out = tmp_path / "z2lora"
    metrics = train(SFTConfig(data=str(sft_data), base=str(tiny_base), out=str(out),
                              deepspeed="zero2", lora=True, lr=3e-3, workers=2, epochs=2,
                              batch_size=2, max_length=96))
    assert metrics["engine"] == "zero2" and metrics["lora"]
    _assert_learned(metrics, total_steps=8)
    _check_export(out, metrics)
    # LoRA was merged: plain weight names, and the attention projections moved off the base.
    key = "model.layers.0.self_attn.q_proj.weight"
    with safe_open(out / "model" / "model.safetensors", "pt") as new, \
            safe_open(tiny_base / "model.safetensors", "pt") as old:
        assert not any("lora" in k for k in new.keys())
        assert not torch.equal(new.get_tensor(key), old.get_tensor(key))


def test_deepspeed_zero3_matches_resumed_ddp(ray_local, tiny_base, sft_data, ddp_run, tmp_path):
    """Same data, seed and optimizer as the DDP run: ZeRO-3 must follow the same loss curve,
    which also shows that the killed-and-resumed DDP run lost nothing in the restart."""
    from training.sft import SFTConfig, train

    out = tmp_path / "z3"
    metrics = train(SFTConfig(data=str(sft_data), base=str(tiny_base), out=str(out),
                              deepspeed="zero3", lr=1e-3, workers=2, epochs=2, batch_size=2,
                              max_length=96))
    assert metrics["engine"] == "zero3"
    _assert_learned(metrics, total_steps=8)
    _check_export(out, metrics)
    ddp = json.loads((ddp_run[0] / "metrics.json").read_text())
    assert [s["loss"] for s in metrics["steps"]] == pytest.approx(
        [s["loss"] for s in ddp["steps"]], rel=1e-2)
