"""Submit a synthrag command to a Ray cluster as a job and follow it to the end.

This is ``ray job submit`` with synthrag's defaults, on the Ray Jobs API
(:class:`ray.job_submission.JobSubmissionClient`):

* the working dir (default: the current directory) is uploaded with the runtime env of
  :mod:`cluster.runtime_env` (offline env vars; ``--pip`` adds the project's dependencies for a
  bare cluster; ``--runtime-env FILE`` merges a YAML file on top);
* a command that starts with ``synthrag`` runs as ``python -m pipelines.cli ...``, so it uses the
  uploaded code whether or not the console script is installed on the cluster;
* the job's logs are streamed (``tail_job_logs``) until it ends, and the job's status becomes the
  exit status: 0 when it SUCCEEDED, the driver's exit code (or 1) when it FAILED, 2 when it was
  STOPPED.

Example::

    synthrag submit --address http://head:8265 -- synthrag run ragsynth --run runs/r1
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
from pathlib import Path
from typing import TextIO

from pydantic import BaseModel, Field, field_validator

from cluster import runtime_env as renv

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class SubmitConfig(BaseModel):
    """What ``synthrag submit`` sends; validated before anything touches the network."""

    address: str = DEFAULT_ADDRESS
    command: list[str] = Field(min_length=1)
    working_dir: Path | None = Path(".")
    runtime_env_file: Path | None = None
    pip: bool = False
    embedded_llm: bool = False
    wait: bool = True
    submission_id: str | None = None
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None

    @field_validator("address")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            # The Jobs API is served by the dashboard (port 8265), not the GCS (6379).
            raise ValueError(f"address must be the dashboard URL http(s)://HOST:8265, got {v!r}")
        return v.rstrip("/")

    @field_validator("working_dir", "runtime_env_file")
    @classmethod
    def _exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.exists():
            raise ValueError(f"{v} does not exist")
        return v


def entrypoint(command: list[str]) -> str:
    """The shell command the job runs (``synthrag X`` becomes ``python -m pipelines.cli X``)."""
    if command[0] == "synthrag":
        command = ["python", "-m", "pipelines.cli", *command[1:]]
    return shlex.join(command)


def job_runtime_env(cfg: SubmitConfig) -> dict:
    """Default env of :mod:`cluster.runtime_env`, with the YAML file (if any) merged on top."""
    wd = str(cfg.working_dir.resolve()) if cfg.working_dir is not None else None
    env = renv.build(wd, pip=cfg.pip, embedded_llm=cfg.embedded_llm)
    if cfg.runtime_env_file is not None:
        extra = renv.load(cfg.runtime_env_file)
        if "working_dir" in extra and extra["working_dir"] in (".", "./"):
            extra.pop("working_dir")  # "." in the shared YAML means "the dir being submitted"
        env = renv.merge(env, extra)
    return env


async def follow_logs(client, job_id: str, out: TextIO) -> int:
    """Stream the job's logs to ``out`` until the job ends; returns characters written."""
    n = 0
    async for chunk in client.tail_job_logs(job_id):
        out.write(chunk)
        out.flush()
        n += len(chunk)
    return n


def wait_terminal(client, job_id: str, *, poll_s: float = 0.5) -> str:
    """Poll until the job reaches a terminal status (log streaming can end a little earlier)."""
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


def exit_code(status: str, driver_exit_code: int | None) -> int:
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        return 2
    if driver_exit_code:
        return max(1, min(int(driver_exit_code), 255))
    return 1


def submit(cfg: SubmitConfig, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Submit ``cfg.command``; with ``wait`` follow its logs and return its exit status."""
    from ray.job_submission import JobSubmissionClient

    out = out or sys.stdout
    err = err or sys.stderr
    client = JobSubmissionClient(cfg.address)
    job_id = client.submit_job(
        entrypoint=entrypoint(cfg.command),
        runtime_env=job_runtime_env(cfg),
        submission_id=cfg.submission_id,
        metadata={"synthrag_command": shlex.join(cfg.command)[:1000]},
        entrypoint_num_cpus=cfg.entrypoint_num_cpus,
        entrypoint_num_gpus=cfg.entrypoint_num_gpus,
    )
    print(f"[synthrag] submitted job {job_id} to {cfg.address}", file=err, flush=True)
    if not cfg.wait:
        print(f"[synthrag] follow it with: ray job logs --address {cfg.address} -f {job_id}",
              file=err)
        return 0
    try:
        try:
            asyncio.run(follow_logs(client, job_id, out))
        except Exception as e:  # noqa: BLE001 - the log stream broke; the job may still run
            print(f"[synthrag] log stream interrupted ({e}); waiting for the job to end",
                  file=err, flush=True)
        status = wait_terminal(client, job_id)
    except KeyboardInterrupt:
        print(f"\n[synthrag] detached; job {job_id} keeps running "
              f"(ray job stop --address {cfg.address} {job_id})", file=err)
        return 130
    info = client.get_job_info(job_id)
    code = exit_code(status, getattr(info, "driver_exit_code", None))
    reason = (info.message or "").split("\n")[0].split(", last available logs")[0]
    msg = f" ({reason})" if status != "SUCCEEDED" and reason else ""
    print(f"[synthrag] job {job_id} {status}{msg}", file=err, flush=True)
    return code
