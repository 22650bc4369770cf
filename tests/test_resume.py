"""Failures mid-stage: a killed driver resumes row by row; a killed LLM actor loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from pipelines.core.run import Run

REPO = Path(__file__).resolve().parents[1]


def test_resume_keeps_finished_rows_and_drops_cut_files(ray_local, tmp_path):
    import pyarrow as pa
    import ray

    run = Run.open(tmp_path, command="t", config={})
    with run.stage("s", 1) as rec:
        staging = run.path(".staging") / "s"
        staging.mkdir(parents=True, exist_ok=True)
        pa.parquet.write_table(pa.table({"k": ["a", "b"], "reject_reason": [None, None]}), staging / "old.parquet")
        (staging / "cut.parquet").write_bytes(b"PAR1 half a file")  # a write cut off by a crash
        ds = run.resume(rec, ray.data.from_items([{"k": k} for k in "abcd"]), "k")
        assert sorted(r["k"] for r in ds.take_all()) == ["c", "d"]
        assert rec.resumed_rows == 2 and not (staging / "cut.parquet").exists()
    with run.stage("s", 2) as rec:  # another fingerprint: a fresh start, nothing kept
        ds = run.resume(rec, ray.data.from_items([{"k": k} for k in "ab"]), "k")
        assert ds.count() == 2


def test_commit_packs_many_small_blocks_into_large_row_groups(ray_local, tmp_path):
    """A stage's output arrives as many tiny blocks; the committed table must not keep one row
    group per block (at 1M chunks that was 10k groups of ~19 rows and 25 MB footers per file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from pipelines.core.run import REJECT_DETAIL, REJECT_REASON

    n = 25_000
    rows = [{"k": i, REJECT_REASON: "odd" if i % 7 == 0 else None, REJECT_DETAIL: None} for i in range(n)]
    ds = ray.data.from_items(rows, override_num_blocks=500)  # blocks of 50 rows
    run = Run.open(tmp_path, command="t", config={})
    with run.stage("s", 1) as rec:
        run.commit(rec, ds, table="t", schema=pa.schema([pa.field("k", pa.int64())]))
    kept = sorted(pads.dataset(run.path("t")).to_table().column("k").to_pylist())
    assert kept == [i for i in range(n) if i % 7]
    assert rec.out == len(kept) and rec.rejected == {"odd": n - len(kept)}
    groups = [pq.ParquetFile(f).metadata.row_group(g).num_rows
              for f in sorted(run.path("t").glob("*.parquet"))
              for g in range(pq.ParquetFile(f).num_row_groups)]
    assert sum(groups) == len(kept) and len(groups) <= 3, groups
    assert all(g >= 10_000 for g in groups[:-1])


def test_a_stage_without_row_resume_does_not_commit_staged_rows_twice(ray_local, tmp_path):
    """A stage that recomputes everything (it never calls resume) and was killed while writing
    leaves staged files behind; its rerun must not add its rows next to them."""
    import pyarrow as pa
    import ray

    from pipelines.core.run import REJECT_DETAIL, REJECT_REASON

    rows = [{"k": i, REJECT_REASON: None, REJECT_DETAIL: None} for i in range(100)]
    schema = pa.schema([pa.field("k", pa.int64())])
    run = Run.open(tmp_path, command="t", config={})
    with pytest.raises(RuntimeError):
        with run.stage("s", 1) as rec:
            ray.data.from_items(rows[:60]).write_parquet(str(run.staging_dir("s")))  # killed mid-write
            raise RuntimeError("killed")
    assert any(run.staging_dir("s").glob("*.parquet"))
    run = Run.open(tmp_path, command="t", config={})
    with run.stage("s", 1) as rec:
        assert rec.resumed
        run.commit(rec, ray.data.from_items(rows), table="t", schema=schema)
    assert sorted(pads.dataset(run.path("t")).to_table().column("k").to_pylist()) == list(range(100))
    assert rec.in_ == rec.out == 100


@pytest.mark.slow
def test_killed_driver_resumes_without_duplicates(tiny_llm, tmp_path):
    # the tiny random model (tests/conftest.py): the mechanics are the subject, not the replies
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "ragsynth", "--corpus", str(REPO / "examples" / "corpus"),
           "--out", str(out), "--limit", "4", "--set", "llm.batch_size=1", "--set", "llm.max_retries=0",
           "--set", "llm.engine=transformers", "--set", f"llm.model={tiny_llm}",
           "--set", "ragsynth.multihop.enabled=false", "--set", "ragsynth.rewrites.enabled=false",
           "--set", "ragsynth.variants.enabled=false", "--set", "ragsynth.export.lists=false"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "SYNTHRAG_PROGRESS": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    staging = out / ".staging" / "ragsynth_clues"
    deadline = time.time() + 900
    try:
        while time.time() < deadline and proc.poll() is None:
            if staging.is_dir() and len(list(staging.glob("*.parquet"))) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be interrupted"
        assert len(list(staging.glob("*.parquet"))) >= 2, "no rows were written mid-stage"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "running"  # it really died mid-run
    # a file the kill cut short is not opened (the rerun ignores it too)
    done_before = {r for f in staging.glob("*.parquet") if _complete(f)
                   for r in pads.dataset(f).to_table(columns=["chunk_id"]).column(0).to_pylist()}

    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    stages = {s["name"]: s for s in manifest["stages"]}
    assert manifest["status"] == "done"
    for s in stages.values():
        assert s["in"] == s["out"] + sum(s["rejected"].values()), s
    clues = stages["ragsynth_clues"]
    assert clues["in"] == 4
    assert clues["resumed_rows"] >= len(done_before) >= 2  # finished rows were kept, not recomputed
    assert "up to date, skipped" in res.stdout  # ingest stages finished before the kill
    ids = pads.dataset(out / "examples").to_table(columns=["example_id"]).column(0).to_pylist()
    assert len(ids) == len(set(ids))
    chunk_rows = pads.dataset(out / "ragsynth_clues").to_table(columns=["chunk_id"]).column(0).to_pylist()
    rejected = []
    if (out / "rejects" / "ragsynth_clues").is_dir():
        rejected = pads.dataset(out / "rejects" / "ragsynth_clues").to_table(columns=["chunk_id"]).column(0).to_pylist()
    assert len(chunk_rows) + len(rejected) == 4 == len(set(chunk_rows) | set(rejected))


def _complete(f: Path) -> bool:
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(f)
        return True
    except Exception:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("warm", [False, True], ids=["stage_pool", "warm_server"])
def test_killed_llm_actor_loses_nothing(ray_local, tiny_llm, tmp_path, warm):
    """The first time the actor sees row 'boom' its process dies; Ray restarts it and retries.
    The same holds for a run's warm server (actors/llm_pool.py)."""
    import contextlib

    import ray

    from actors import llm_pool
    from actors.llm import LLMConfig, llm_map

    marker = tmp_path / "killed-once"

    def check(row, reply):
        if row["text"].startswith("Boom") and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)  # a crashed actor (segfault, OOM kill, lost node)
        return None

    texts = ["Bees make honey from nectar.", "Boom: the fuse blew in the pump house.", "Owls hunt at night."]
    with llm_pool.warm() if warm else contextlib.nullcontext():
        ds = llm_map(ray.data.from_items([{"text": t} for t in texts]),
                     llm=LLMConfig(engine="transformers", model=str(tiny_llm), num_cpus=1, batch_size=1, max_retries=0),
                     prompt="test/echo_question", stage="crash", check=check)
        out = ds.take_all()
    assert marker.exists(), "the actor was never killed"
    assert sorted(r["text"] for r in out) == sorted(texts)
    for r in out:
        assert r["reject_reason"] is None, r["reject_detail"]
        assert json.loads(r["llm_output"])["question"]


@pytest.mark.slow
def test_a_row_that_always_kills_its_actor_is_rejected_and_the_rest_kept(ray_local, tiny_llm, tmp_path):
    """A poison row kills every worker that holds it: after llm.max_crashes deaths it is a reject
    (actor_crashed) and every other row of its batch still gets its reply."""
    import ray

    from actors.llm import LLMConfig, llm_map

    deaths = tmp_path / "deaths"
    deaths.mkdir()

    def check(row, reply):
        if row["text"].startswith("Boom"):
            (deaths / f"{os.getpid()}").touch()
            os._exit(1)
        return None

    texts = ["Bees make honey from nectar.", "Boom: the fuse blew in the pump house.", "Owls hunt at night."]
    ds = llm_map(ray.data.from_items([{"text": t} for t in texts]),
                 llm=LLMConfig(engine="transformers", model=str(tiny_llm), num_cpus=1, batch_size=3, max_retries=0,
                               max_crashes=2),
                 prompt="test/echo_question", stage="poison", check=check, journal_dir=tmp_path / "inflight")
    out = {r["text"]: r for r in ds.take_all()}
    assert sorted(out) == sorted(texts)
    assert len(list(deaths.iterdir())) == 2  # held twice (in its batch, then alone), then not run again
    boom = out[texts[1]]
    assert boom["reject_reason"] == "actor_crashed" and boom["llm_output"] is None
    for t in (texts[0], texts[2]):
        assert out[t]["reject_reason"] is None, out[t]["reject_detail"]
        assert json.loads(out[t]["llm_output"])["question"]
    assert not list((tmp_path / "inflight").glob("*.inflight"))  # the journal is clean afterwards
    from actors.crash_journal import CrashJournal

    # what the stage reports in its own words: the batch of 3 was rerun row by row, the poison row rejected
    assert CrashJournal(tmp_path / "inflight").recoveries() == {"batches": 1, "rows": 3, "rejected": 1}
