"""SIGTERM (a scheduler's stop, `kill`) stops a run the way Ctrl-C does: finished stages stay,
the manifest says `interrupted`, the command exits with one line, and a rerun resumes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "corpus"


def _sigterm_after_first_stage(manifest: Path, fired: list) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            stages = json.loads(manifest.read_text())["stages"]
        except (OSError, ValueError, KeyError):
            stages = []
        if any(s["status"] == "done" for s in stages):
            fired.append([s["name"] for s in stages if s["status"] == "done"])
            os.kill(os.getpid(), signal.SIGTERM)
            return
        time.sleep(0.02)


def test_sigterm_marks_the_run_interrupted_and_the_rerun_resumes(tmp_path, ray_local):
    from pipelines.cli.run import RunInterrupted, execute

    out = tmp_path / "run"
    fired: list = []
    killer = threading.Thread(target=_sigterm_after_first_stage, args=(out / "manifest.json", fired), daemon=True)
    killer.start()
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunInterrupted, match="rerun the same command to resume"):
        execute("ingest", CORPUS, out, None, None, None)
    killer.join()
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the caller's again
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    done = [s["name"] for s in manifest["stages"] if s["status"] == "done"]
    assert fired and set(fired[0]) <= set(done) and "read" in done
    assert {s["status"] for s in manifest["stages"]} <= {"done", "interrupted"}
    assert (out / "documents").is_dir() and any((out / "documents").glob("*.parquet"))

    execute("ingest", CORPUS, out, None, None, None)  # the rerun skips what was done
    again = json.loads((out / "manifest.json").read_text())
    assert again["status"] == "done" and all(s["status"] == "done" for s in again["stages"])
    kept = {s["name"]: s["started"] for s in manifest["stages"] if s["status"] == "done"}
    assert {s["name"]: s["started"] for s in again["stages"] if s["name"] in kept} == kept


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (the test fills it up during the run)."""
    import shutil
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if not shutil.which("mount") or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                                                   capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root / CAP_SYS_ADMIN)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_run_with_one_error_and_keeps_committed_stages(small_disk, tmp_path, ray_local):
    import shutil

    import pyarrow.dataset as pads

    from pipelines.cli.run import execute
    from pipelines.core.run import DiskFull

    out = small_disk / "run"

    def fill_after_read():  # once `read` has committed, another program takes the rest of the disk
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if any(s["name"] == "read" and s["status"] == "done"
                       for s in json.loads((out / "manifest.json").read_text())["stages"]):
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.01)
        with open(small_disk / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass

    filler = threading.Thread(target=fill_after_read, daemon=True)
    filler.start()
    with pytest.raises(DiskFull, match="no space left on the disk of .*rerun the same command to resume"):
        execute("ingest", CORPUS, out, None, None, None)
    filler.join()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] != "done"
    committed = {s["name"]: s for s in manifest["stages"] if s["status"] == "done"}
    assert "read" in committed  # (the sample's documents fit; a later stage's output does not)
    tables = {"read": "documents", "chunk": "chunks_raw", "dedupe": "chunks", "sentences": "sentences",
              "quality": "chunk_quality"}
    for name, stage in committed.items():  # every committed stage's rows are all there
        assert pads.dataset(out / tables[name], format="parquet").count_rows() == stage["out"]

    moved = tmp_path / "moved"  # freed space: the same run, elsewhere, resumes and finishes
    shutil.copytree(out, moved)
    assert committed["read"]["out"] > 0
    execute("ingest", CORPUS, moved, None, None, None)
    again = json.loads((moved / "manifest.json").read_text())
    assert again["status"] == "done"
    assert all(s["started"] == committed[s["name"]]["started"] for s in again["stages"] if s["name"] in committed)
