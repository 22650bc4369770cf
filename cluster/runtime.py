"""Start or join Ray. Every entry point goes through :func:`connect`.

Without an address a local Ray is started (dashboard off); with ``--address`` or
``RAY_ADDRESS`` the process joins that cluster. Calling it twice is harmless.

Quiet by default: what a person sees is synthrag's own line per stage. Ray's log lines (worker
output forwarded to the driver, Ray Data's progress and execution logs; the C++ core's lines are
filtered by :mod:`cluster.quiet` in the CLI) are shown with ``synthrag --verbose`` (or
``SYNTHRAG_VERBOSE=1``). A real failure still surfaces as the Python exception it raises.
"""

from __future__ import annotations

import logging
import os
import socket
from urllib.parse import urlsplit

import ray


class ClusterUnreachable(ConnectionError):
    """``--address`` / ``RAY_ADDRESS`` names a cluster nothing answers at."""


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, with one line, when nothing listens at ``address`` (``host:port`` or
    ``ray://host:port``); ``auto``/``local`` are Ray's to resolve. ``ray.init`` itself would
    retry for about a minute and then raise a page of traceback."""
    if address in ("auto", "local") or not address:
        return
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise ClusterUnreachable(f"Ray address {address!r} is not host:port (e.g. 10.0.0.5:6379 or ray://host:10001)")
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        raise ClusterUnreachable(f"no Ray cluster answers at {address} ({e.strerror or e}); start one with "
                                 f"`ray start --head` or check --address / RAY_ADDRESS") from None


def verbose() -> bool:
    return os.environ.get("SYNTHRAG_VERBOSE", "0") not in ("", "0", "false")


def connect(address: str | None = None, *, num_cpus: int | None = None) -> dict:
    """Join ``address`` (or ``RAY_ADDRESS``) or start a local Ray; returns cluster resources."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        check_reachable(address)
    if ray.is_initialized():
        return ray.cluster_resources()
    loud = verbose()
    kwargs: dict = dict(
        address=address,
        log_to_driver=loud,
        logging_level=logging.INFO if loud else logging.WARNING,
        configure_logging=True,
    )
    if address is None:
        # A laptop/CI run: a private local instance without the dashboard (saves ~450 MB). At
        # least 4 logical CPUs, so a Serve replica, an actor pool and the read tasks feeding it
        # can all be scheduled on a 2-core machine instead of waiting on each other.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        kwargs.update(include_dashboard=False, num_cpus=num_cpus or max(4, os.cpu_count() or 1))
    if not loud:
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")  # Ray Data re-applies its config per dataset
        for name in ("ray.data", "ray.train", "ray.tune", "ray.serve"):
            logging.getLogger(name).setLevel(logging.ERROR)
    ray.init(**kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = os.environ.get("SYNTHRAG_PROGRESS", "1" if loud else "0") != "0"
    ctx.print_on_execution_start = False
    return ray.cluster_resources()


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()
