"""Which rows a dead worker was holding, so that one poison row cannot fail a job.

An actor that dies (a segfault in a native library, an OOM kill, a lost spot node) takes its
batch with it; Ray restarts the actor and retries the batch. A row that kills the worker every
time would exhaust those retries and fail the whole job. The journal bounds that:

- before a batch runs, the keys of its rows are written to a file in the journal folder, and the
  file is removed when the batch returns;
- a file left behind is a crash. Live workers never hold the same rows (Ray Data hands each
  block to one task), so a file that names a batch's rows before that batch starts was left by
  a dead attempt of it;
- a batch whose rows were in flight during a crash runs one row at a time, each row under its own
  entry, so the next crash points at the row that caused it; a row that has been in flight during
  ``max_crashes`` crashes is not run again: the caller rejects it.

The folder must be visible to every worker that may retry the batch (the run directory, on a
cluster's shared storage); a private folder still works on one machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence


def row_key(row: dict) -> str:
    """A stable key of a row's content."""
    text = json.dumps(row, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


class CrashJournal:
    def __init__(self, folder: str | Path, max_crashes: int = 2):
        self.folder = Path(folder)
        self.max_crashes = max_crashes
        self.folder.mkdir(parents=True, exist_ok=True)

    def _entries(self) -> Iterator[tuple[Path, list[str]]]:
        for f in self.folder.glob("*.inflight"):
            try:
                yield f, json.loads(f.read_text())
            except (OSError, ValueError):  # removed meanwhile, or cut off mid-write by the crash
                continue

    def crashes(self, keys: Sequence[str]) -> dict[str, int]:
        """How many dead attempts held each of ``keys``."""
        wanted = set(keys)
        counts = Counter(k for _, held in self._entries() for k in held if k in wanted)
        return {k: counts.get(k, 0) for k in keys}

    @contextmanager
    def in_flight(self, keys: Sequence[str]):
        """Record ``keys`` as held while the block runs; a crash leaves the record behind.

        Deliberately no ``finally``: an exception that escapes the block also leaves the record,
        so a row that raises on every retry is rejected like one that kills its worker."""
        path = self.folder / f"{uuid.uuid4().hex}.inflight"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(list(keys)))
        os.replace(tmp, path)
        yield
        path.unlink(missing_ok=True)

    def forget(self, keys: Sequence[str]) -> None:
        """Drop the crash records of a batch that has now been handled."""
        done = set(keys)
        for f, held in self._entries():
            if set(held) <= done:
                f.unlink(missing_ok=True)

    def note_recovery(self, rows: int, rejected: int) -> None:
        """Record that a batch held by a dead worker was rerun row by row (``rejected`` of its
        ``rows`` as poison), so the driver can say so in its own words (:meth:`recoveries`)."""
        (self.folder / f"{uuid.uuid4().hex}.recovered").write_text(json.dumps({"rows": rows, "rejected": rejected}))

    def recoveries(self) -> dict[str, int]:
        """Totals over every recovered batch: ``{"batches", "rows", "rejected"}``."""
        out = {"batches": 0, "rows": 0, "rejected": 0}
        for f in self.folder.glob("*.recovered"):
            try:
                rec = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            out["batches"] += 1
            out["rows"] += rec["rows"]
            out["rejected"] += rec["rejected"]
        return out

    def clear(self) -> None:
        """Start afresh (records left by a killed driver are not the rows' fault)."""
        for pattern in ("*.inflight", "*.tmp", "*.recovered"):
            for f in list(self.folder.glob(pattern)):
                f.unlink(missing_ok=True)
