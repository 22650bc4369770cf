"""A private local Ray head with the dashboard, for tests and benchmarks that need a real
cluster address (the Jobs API, the state API) beside, not inside, their own process.

Stopped by SIGTERM to the blocking ``ray start`` (it stops what it started), then SIGKILL to its
process group: never ``ray stop``, which stops every Ray of this user.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

VENV_BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"port {port} did not open")


@contextmanager
def private_head(num_cpus: int, log_path: Path, env: dict, *, prefix: str = "srhead-", timeout_s: float = 120,
                 wait_agent: bool = False) -> Iterator[tuple[str, str]]:
    """Start ``ray start --head --block`` on free ports; yield (GCS address, dashboard URL).
    ``env`` is the head's environment; ``wait_agent`` also waits for the dashboard agent (jobs)."""
    (gcs, dash, agent_http, agent_grpc, renv, client, metrics, nm, om) = free_ports(9)
    temp_dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # short: unix socket paths
    log = open(log_path, "a")
    proc = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--num-cpus={num_cpus}",
         "--include-dashboard=true", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--port={gcs}", f"--dashboard-port={dash}",
         f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--runtime-env-agent-port={renv}", f"--ray-client-server-port={client}",
         f"--metrics-export-port={metrics}", f"--node-manager-port={nm}",
         f"--object-manager-port={om}", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                log.flush()
                raise RuntimeError(f"ray start exited {proc.returncode}: {Path(log_path).read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        if wait_agent:
            _wait_port(agent_http, deadline)  # jobs are handed to the head's dashboard agent
        yield f"127.0.0.1:{gcs}", url
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` drains and stops its processes
        try:
            proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything of ours still alive in the group
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
