"""``synthrag serve teacher``: the relevance teacher on Ray Serve until SIGINT/SIGTERM.

Registers on :data:`pipelines.cli.app.serve_app` when imported. The HTTP API and the
deployment are in :mod:`actors.teacher`; this module only turns flags into a
:class:`~actors.teacher.TeacherConfig`, starts the application, waits, and shuts Serve down.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Optional

import typer
import yaml

from pipelines.cli.app import serve_app
from pipelines.core.config import ConfigError


class PortInUse(OSError):
    """Another process listens on the port Serve was asked to use."""


class ServeRunning(RuntimeError):
    """Ray Serve already runs in the cluster with HTTP on another host or port."""


def check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` once and let go: taken means another program serves there (Serve
    itself would log the failure in its proxy actor and keep retrying, never telling us)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PortInUse(f"port {port} on {host} is in use by another program; "
                                f"pick another with --port") from None
            raise


def _load_config(path: Optional[Path]) -> dict:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data.get("teacher", data)  # a whole run config or just its teacher: section


@serve_app.command("teacher")
def serve_teacher(
    model: Optional[str] = typer.Option(None, "--model", help="'embedded' (default: LLM judge on SmolLM2-135M), "
                              "a cross-encoder directory, or a causal-LM directory (LLM judge)."),
    judge: Optional[str] = typer.Option(None, "--judge", help="LLM judge scoring: 'query-likelihood' (p(query | passage), default) "
                                        "or 'yes-no' (P(yes), for larger local LLMs)."),
    host: Optional[str] = typer.Option(None, "--host", help="HTTP host (default 127.0.0.1; 0.0.0.0 for all interfaces)."),
    port: Optional[int] = typer.Option(None, "--port", help="HTTP port of Ray Serve (default 8000)."),
    token: Optional[str] = typer.Option(None, "--token", envvar="SYNTHRAG_TEACHER_TOKEN",
                                        help="Bearer token required on POST /score (env SYNTHRAG_TEACHER_TOKEN)."),
    min_replicas: Optional[int] = typer.Option(None, "--min-replicas", help="Autoscaling minimum (default 1)."),
    max_replicas: Optional[int] = typer.Option(None, "--max-replicas", help="Autoscaling maximum (default 1)."),
    num_cpus: Optional[float] = typer.Option(None, "--num-cpus", help="CPUs per replica (default 1)."),
    num_gpus: Optional[float] = typer.Option(None, "--num-gpus",
                                             help="GPUs per replica, e.g. 0.25 (default: 0.25 if the cluster has GPUs)."),
    max_passages: Optional[int] = typer.Option(None, "--max-passages", help="Passages per request (default 64)."),
    max_batch_size: Optional[int] = typer.Option(None, "--max-batch-size", help="Pairs per model call (default 16)."),
    config: Optional[Path] = typer.Option(None, "--config", exists=True, dir_okay=False,
                                          help="YAML with TeacherConfig fields (or a run config's teacher: section); flags win."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join (default: RAY_ADDRESS or a local Ray)."),
) -> None:
    """Serve the relevance teacher: POST /score, GET /health, until interrupted."""
    import ray
    from ray import serve

    from actors.teacher import TeacherConfig, start_teacher
    from pipelines.core.config import validate
    from actors.models import resolve_model

    fields = _load_config(config)
    flags = dict(model=model, judge=judge, host=host, port=port, token=token, min_replicas=min_replicas,
                 max_replicas=max_replicas, num_cpus=num_cpus, num_gpus=num_gpus,
                 max_passages=max_passages, max_batch_size=max_batch_size)
    fields.update({k: v for k, v in flags.items() if v is not None})
    cfg = validate(TeacherConfig, fields, source=str(config) if config else "teacher flags", prefix="teacher")
    if cfg.model != "embedded":
        resolve_model(cfg.model, "teacher")

    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    from ray.serve.context import _get_global_client

    from cluster.runtime import connect

    ray_was_running = ray.is_initialized()
    connect(address)
    running = _get_global_client(raise_if_no_controller_running=False)
    if running is not None and (running.http_config.host, running.http_config.port) != (cfg.host, cfg.port):
        http = running.http_config
        if not ray_was_running:
            ray.shutdown()
        raise ServeRunning(f"Ray Serve already runs in this cluster with HTTP on {http.host}:{http.port}; "
                           f"serve the teacher there (--host {http.host} --port {http.port}) or stop Serve first")
    owns_serve = running is None  # stop Serve on exit only if this command started it
    if owns_serve and not (address or os.environ.get("RAY_ADDRESS")):  # Serve will bind on this machine
        try:
            check_port_free(cfg.host, cfg.port)
        except PortInUse:
            if not ray_was_running:
                ray.shutdown()
            raise
    try:
        start_teacher(cfg, address=address)
        base = f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"
        typer.echo(f"teacher ({cfg.model}) listening: POST {base}/score, GET {base}/health"
                   f"{' (bearer token required)' if cfg.token else ''}; Ctrl-C to stop", err=True)
        while not stop.wait(0.5):
            pass
        typer.echo("stopping teacher", err=True)
    finally:
        if owns_serve:
            serve.shutdown()
        else:
            serve.delete(cfg.app_name)
        if not ray_was_running:
            ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    typer.echo("teacher stopped", err=True)
