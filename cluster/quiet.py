"""Keep a person's terminal for synthrag's own lines (``synthrag --verbose`` turns this off).

Ray writes three kinds of noise into a driver's terminal that no Ray setting silences without
also hiding real failures: its C++ core's log lines on file descriptor 2 (for instance an ``E``
line for every actor pool Ray Data starts, about constructor arguments and ``max_restarts``),
raylet notices relayed to the driver ("N worker processes have been started ..."), and
deprecation warnings about arguments synthrag passes on purpose. :func:`quiet_terminal` drops
exactly those; Python tracebacks, synthrag's output and every other raylet message (an OOM kill,
say) still reach the terminal, and Ray keeps its own log files under ``/tmp/ray/session_*``.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading
import warnings

# glog's prefix: "[2026-12-03 09:47:05,319 E 6446 6446] core_worker.cc:2465: ..."
NATIVE_LOG_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWEF] \d+ \d+\] ")
RAYLET_NOISE = ("PYTHON worker processes have been started",)


def quiet_terminal() -> None:
    """Filter this process's native stderr and Ray's relayed notices (call once, before Ray)."""
    _filter_native_stderr()
    _filter_raylet_notices()
    warnings.filterwarnings("ignore", module=r"ray(\.|$)")
    warnings.filterwarnings("ignore", message=r".*ray_remote_args.*")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _filter_native_stderr() -> None:
    """Route fd 2 through a pipe; a thread forwards every line but glog-prefixed ones."""
    try:
        real = os.dup(2)
    except OSError:
        return
    read_end, write_end = os.pipe()
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as src:
            for line in iter(src.readline, b""):
                if not NATIVE_LOG_LINE.match(line):
                    os.write(real, line)

    thread = threading.Thread(target=pump, name="synthrag-stderr", daemon=True)
    thread.start()

    def restore() -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(real, 2)  # this process's last write end closes: the pump reads to the end
        thread.join(timeout=2.0)  # (a child that inherited the pipe would hold it open)

    atexit.register(restore)


def _filter_raylet_notices() -> None:
    try:
        from ray._private import worker
    except ImportError:
        return
    original = worker.print_to_stdstream

    def print_to_stdstream(data, ignore_prefix: bool):
        if data.get("pid") == "raylet":
            lines = [ln for ln in data.get("lines", []) if not any(n in ln for n in RAYLET_NOISE)]
            if not lines:
                return
            data = {**data, "lines": lines}
        return original(data, ignore_prefix)

    worker.print_to_stdstream = print_to_stdstream
