"""What a person sees when they get something wrong: one line naming the problem, exit status 2,
no traceback (unless --verbose), and nothing started or written. Each case runs the real entry
point (``pipelines.cli.main``) in-process; none of them needs Ray, since every check runs first."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.core.config import ConfigError

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "corpus"


def fail(capsys, args: list[str]) -> str:
    """Run ``synthrag ARGS``; it must exit 2 with one line on stderr and no traceback."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("synthrag: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_config_mistakes_name_the_key_the_value_and_the_fix(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHRAG_VERBOSE", "0")  # restored after: --verbose below sets it
    run = ["run", "ragsynth", "--corpus", str(CORPUS), "--out", str(tmp_path / "r")]
    line = fail(capsys, [*run, "--set", "llm.batchsize=4"])
    assert "unknown key llm.batchsize (did you mean llm.batch_size?)" in line
    line = fail(capsys, [*run, "--set", "ingest.quality.min_scor=0.2"])
    assert "did you mean ingest.quality.min_score?" in line

    line = fail(capsys, [*run, "--set", "llm.batch_size=many"])
    assert "llm.batch_size = 'many'" in line and "(expected int)" in line

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("llm:\n  batch_size: [1\n")
    assert "is not valid YAML" in fail(capsys, [*run, "--config", str(bad_yaml)])
    typo = tmp_path / "typo.yaml"
    typo.write_text("ragsynth:\n  multihop:\n    hopz: [2]\n")
    line = fail(capsys, [*run, "--config", str(typo)])
    assert f"in {typo}" in line and "did you mean ragsynth.multihop.hops?" in line
    assert not (tmp_path / "r").exists()  # nothing was written

    with pytest.raises(ConfigError):  # --verbose: the exception itself, with its traceback
        main(["--verbose", *run, "--set", "llm.batchsize=4"])


def test_paths_that_cannot_work_are_refused_before_anything_starts(capsys, tmp_path):
    out = tmp_path / "r"
    line = fail(capsys, ["run", "ragsynth", "--corpus", str(tmp_path / "nope"), "--out", str(out)])
    assert "corpus path" in line and "does not exist" in line

    not_a_model = tmp_path / "weights"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("not a model")
    line = fail(capsys, ["run", "ragsynth", "--corpus", str(CORPUS), "--out", str(out),
                         "--set", "llm.engine=transformers", "--set", f"llm.model={not_a_model}"])
    assert "llm.model" in line and "is not a model" in line
    line = fail(capsys, ["run", "querygen", "--corpus", str(CORPUS), "--out", str(out),
                         "--set", f"querygen.teacher.model={tmp_path / 'missing'}"])
    assert "querygen.teacher.model" in line and "never downloads" in line
    assert not out.exists()


def test_a_run_directory_of_another_method_or_a_newer_synthrag_is_not_reused(capsys, tmp_path):
    theirs = tmp_path / "qg"
    theirs.mkdir()
    manifest = {"command": "run querygen", "stages": [], "versions": {"synthrag": "0.1.0"}, "status": "done"}
    (theirs / "manifest.json").write_text(json.dumps(manifest))
    line = fail(capsys, ["run", "ragsynth", "--corpus", str(CORPUS), "--out", str(theirs)])
    assert "holds a `run querygen` run" in line

    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "manifest.json").write_text(json.dumps({**manifest, "command": "run ragsynth",
                                                     "versions": {"synthrag": "99.0"}}))
    line = fail(capsys, ["run", "ragsynth", "--corpus", str(CORPUS), "--out", str(newer)])
    assert "synthrag 99.0, newer than this" in line

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "manifest.json").write_text("{not json")
    assert "is not a synthrag manifest" in fail(capsys, ["ingest", "--corpus", str(CORPUS), "--out", str(junk)])
    # the refused folders are untouched
    assert json.loads((theirs / "manifest.json").read_text()) == manifest
    assert sorted(p.name for p in newer.iterdir()) == ["manifest.json"]


def test_an_unreachable_cluster_and_a_taken_port_are_one_line_each(capsys, tmp_path, ray_local):
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
    line = fail(capsys, ["run", "ragsynth", "--corpus", str(CORPUS), "--out", str(tmp_path / "r"),
                         "--address", f"127.0.0.1:{dead}"])
    assert f"no Ray cluster answers at 127.0.0.1:{dead}" in line
    line = fail(capsys, ["serve", "teacher", "--address", f"ray://127.0.0.1:{dead}"])
    assert "no Ray cluster answers" in line
    line = fail(capsys, ["train", "retriever", "--data", str(tmp_path), "--out", str(tmp_path / "m")])
    assert "is not a run directory with retrieval_lists/" in line

    # Serve left running in this Ray by an earlier test would answer first ("Serve already runs
    # ... on 8000", itself one line: below); this part is about a port another program holds
    from ray import serve

    from cluster.local_head import free_ports

    serve_port, teacher_port = free_ports(2)
    serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
    capsys.readouterr()  # Serve's own start-up line
    line = fail(capsys, ["serve", "teacher", "--port", str(teacher_port)])
    assert "Ray Serve already runs in this cluster" in line
    serve.shutdown()
    with socket.socket() as taken:  # another program holds the port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = fail(capsys, ["serve", "teacher", "--port", str(port)])
    assert f"port {port} on 127.0.0.1 is in use" in line
