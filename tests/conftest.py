"""Shared fixtures: one local Ray for the whole test run, offline model loading."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("SYNTHRAG_PROGRESS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):  # the README's `-n 2`: two test processes share 2 cores
    # torch's OpenMP threads spin while they wait; with two processes' threads on two cores the
    # spinning took the cores from the work (a 135M decode: 2.3 steps/s each for two processes,
    # 10.4 alone; passive waiting: 5.3 each)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Ray starts its workers at nice 15: one test process's LLM actor starved whenever the
    # other test process computed
    os.environ.setdefault("RAY_worker_niceness", "0")
# Ray Train's controller polls its workers every 2 s, so a fit ends up to 2 s after its workers
# do; the suite runs ~10 small fits (and its local Rays inherit this environment)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

# Property-based tests (hypothesis): a modest number of cases in CI; `pytest
# --hypothesis-profile=long tests/test_fuzz_readers.py` runs the benchmark figures' thousands.
try:
    from hypothesis import HealthCheck, settings

    _quiet = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
    settings.register_profile("ci", max_examples=30, deadline=None, database=None, suppress_health_check=_quiet,
                              derandomize=True)
    settings.register_profile("long", max_examples=1500, deadline=None, database=None, suppress_health_check=_quiet)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # the property tests skip themselves
    pass

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


# The slowest test files first, by measured seconds (`--durations`): under the README's
# `-n 2 --dist loadfile --no-loadscope-reorder` the two workers take files in this order, so the
# long end-to-end files start early, beside other work, and short ones fill the end (xdist's
# default order, most tests first, left every long file to the end). Unlisted files follow in
# collection order.
SLOWEST_FIRST = [
    "test_ragsynth_pipeline.py", "test_sft_train.py", "test_source2synth_pipeline.py", "test_train_retriever.py",
    "test_querygen.py", "test_resume.py", "test_prismrag_pipeline.py", "test_scarlet.py", "test_teacher.py",
    "test_llm.py", "test_ingest.py", "test_submit.py", "test_prefix_cache.py", "test_vllm_batch.py",
    "test_eval_retrieval.py", "test_gradcache.py", "test_source2synth_curation.py", "test_factuality.py",
    "test_source2synth_eval.py", "test_embedder.py", "test_index_mining.py", "test_generate.py",
]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (starting Ray costs seconds on 2 cores)."""
    import ray

    from cluster.runtime import connect

    # More logical CPUs than cores so small actor pools and 2-worker trainers can coexist.
    connect(num_cpus=4)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> Path:
    """A real transformers model for mechanics tests: the embedded model's tokenizer and chat
    template on a 2-layer, 64-wide Llama with random weights (seeded), built here in under a
    second. It writes nonsense, but JSON-schema guided decoding still makes its replies parse
    when the schema bounds every string (maxLength), so rows flow through every path fast."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from actors.models import embedded_llm_dir

    out = tmp_path_factory.mktemp("tiny-llm")
    tok = AutoTokenizer.from_pretrained(embedded_llm_dir())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


def pytest_sessionfinish(session, exitstatus):
    """Kill what a timed-out test left running (a spawned worker stuck in a collective, say):
    non-daemon children would keep the interpreter from exiting after the summary is printed."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
