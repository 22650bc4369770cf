"""The run directory: tables as Parquet datasets, rejects, exports and ``manifest.json``.

A stage produces one Ray dataset whose rows carry ``reject_reason`` (null when kept) and
``reject_detail``. :meth:`Run.commit` writes it once to a staging folder, splits it into the
stage's table and ``rejects/<stage>/``, records the funnel ``{in, out, rejected}`` and only then
renames the table into place, so a crashed stage never leaves a half table behind. A stage whose
fingerprint (its config and inputs) matches a finished stage in the manifest is skipped.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipelines.core.schema import (
    REJECT_DETAIL,
    REJECT_REASON,
    TABLES,
    dumps,
    stable_id,
    validate,
)

# A table this small (on disk) is read on the driver and given to Ray as one Arrow table
SMALL_TABLE_BYTES = 32 << 20

_VERSIONED = ["synthrag", "ray", "torch", "transformers", "sentence-transformers", "spacy",
              "faiss-cpu", "pyarrow", "vllm", "deepspeed"]


def package_versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


class DiskFull(OSError):
    """The run directory's disk filled up; what was committed before stays (rerun to resume)."""


def is_disk_full(e: BaseException | None) -> bool:
    """Whether ``e`` (or what caused it: a Ray task error's ``cause``, a chained exception) is
    ENOSPC / EDQUOT, the way a full disk shows up from our process, a Ray worker or Arrow."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return False


class RunDirError(ValueError):
    """A run directory this command must not write into (the message says why and what to do)."""


def _method(command: str) -> str | None:
    """``run ragsynth`` -> ``ragsynth``; a command that is not a method run (``ingest``) -> None."""
    parts = command.split()
    return parts[1] if len(parts) == 2 and parts[0] == "run" else None


def check_run_dir(root: Path, command: str) -> dict | None:
    """The manifest of an existing run directory ``command`` may resume (None: a new one).

    Refused: a file in the way, a manifest that does not parse, a run of another method (its
    tables would mix with this one's), and a run written by a newer synthrag (its tables may have
    columns this version does not know)."""
    if root.exists() and not root.is_dir():
        raise RunDirError(f"run directory {root} is a file; pass a folder to --out")
    path = root / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        assert isinstance(manifest, dict) and isinstance(manifest.get("stages"), list)
    except (ValueError, AssertionError, UnicodeDecodeError):
        raise RunDirError(f"{path} is not a synthrag manifest; pick a new --out or remove the folder") from None
    theirs, ours = _method(str(manifest.get("command", ""))), _method(command)
    if theirs and ours and theirs != ours:
        raise RunDirError(f"{root} holds a `{manifest['command']}` run; `{command}` needs its own "
                          f"run directory (pick another --out)")
    written = (manifest.get("versions") or {}).get("synthrag")
    mine = package_versions().get("synthrag")
    if written and mine:
        from packaging.version import InvalidVersion, Version

        try:
            newer = Version(written) > Version(mine)
        except InvalidVersion:
            newer = False
        if newer:
            raise RunDirError(f"{root} was written by synthrag {written}, newer than this {mine}; "
                              f"upgrade synthrag or pick another --out")
    return manifest


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class StageRecord:
    name: str
    fingerprint: str
    status: str = "running"
    started: str = field(default_factory=_now)
    seconds: float = 0.0
    in_: int = 0
    out: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False  # an interrupted run of this same stage (same fingerprint) is continued
    # rows an interrupted run had staged and this one skips; set by Run.resume (None: the stage
    # does not resume row by row, so its staging is started afresh at commit)
    resumed_rows: int | None = None

    def to_json(self) -> dict:
        return {"name": self.name, "in": self.in_, "out": self.out, "rejected": self.rejected,
                "status": self.status, "fingerprint": self.fingerprint,
                "started": self.started, "seconds": round(self.seconds, 3),
                **({} if self.resumed_rows is None else {"resumed_rows": self.resumed_rows}), **self.extra}


class Run:
    """A run directory. Open it with :meth:`open`; every command writes into one."""

    def __init__(self, root: Path, manifest: dict):
        self.root = root
        self.manifest = manifest

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def open(cls, root: str | Path, *, command: str, config: dict) -> "Run":
        root = Path(root).expanduser().resolve()
        manifest = check_run_dir(root, command) or {"created": _now(), "stages": []}
        root.mkdir(parents=True, exist_ok=True)
        manifest.update(command=command, config=config, versions=package_versions(),
                        host=socket.gethostname(), status="running", updated=_now())
        run = cls(root, manifest)
        run._save()
        return run

    def finish(self, status: str = "done") -> None:
        self.manifest["status"] = status
        self.manifest["timings"] = {s["name"]: s["seconds"] for s in self.manifest["stages"]}
        self._save()

    def _save(self) -> None:
        self.manifest["updated"] = _now()
        tmp = self.root / "manifest.json.tmp"
        tmp.write_text(json.dumps(self.manifest, indent=2, default=str))
        os.replace(tmp, self.root / "manifest.json")

    # ------------------------------------------------------------------ paths
    def path(self, name: str) -> Path:
        return self.root / name

    def has(self, table: str) -> bool:
        p = self.path(table)
        return p.is_dir() and any(p.glob("*.parquet"))

    def count(self, table: str) -> int:
        return pads.dataset(self.path(table), format="parquet").count_rows() if self.has(table) else 0

    def read(self, table: str, *, columns: list[str] | None = None):
        """A Ray dataset over a table of this run: streamed from its files (``read_parquet``),
        or, for a table of at most ``SMALL_TABLE_BYTES`` on disk, read here and handed to Ray
        as one Arrow table (``from_arrow``). Same rows either way; a Parquet read operator costs
        ~2-3 s per execution however few its rows (its read tasks and size sampling), which
        made every stage of a small run seconds long (benchmarks/RESULTS.md, small runs)."""
        import ray.data

        if not self.has(table):
            if self.path(table).is_dir():  # committed, but every row was rejected upstream
                return ray.data.from_items([])
            raise FileNotFoundError(f"{self.path(table)} does not exist; run the stage that makes it")
        files = list(self.path(table).glob("*.parquet"))
        if sum(f.stat().st_size for f in files) <= SMALL_TABLE_BYTES:
            return ray.data.from_arrow(self.read_arrow(table, columns=columns))
        return ray.data.read_parquet(str(self.path(table)), columns=columns)

    def sample_keys(self, table: str, column: str, n: int | None, seed: int = 0) -> list[str]:
        """Up to ``n`` values of ``column``, picked by a seeded hash: the same on every rerun
        (so resume and caching agree) and spread over the whole table. Reads one column only."""
        keys = pads.dataset(self.path(table), format="parquet").to_table(columns=[column]).column(0).to_pylist()
        if n is None or n >= len(keys):
            return sorted(keys)
        return sorted(sorted(keys, key=lambda k: stable_id(seed, k))[:n])

    def read_arrow(self, table: str, *, columns: list[str] | None = None) -> pa.Table:
        """The whole table in this process: only for small tables (examples, lists)."""
        if not self.has(table):
            return TABLES[table].empty_table() if table in TABLES else pa.table({})
        return pads.dataset(self.path(table), format="parquet").to_table(columns=columns)

    # ------------------------------------------------------------------ stages
    def stage_record(self, name: str) -> dict | None:
        return next((s for s in self.manifest["stages"] if s["name"] == name), None)

    def is_done(self, name: str, fingerprint: str) -> bool:
        rec = self.stage_record(name)
        return bool(rec and rec["status"] == "done" and rec["fingerprint"] == fingerprint)

    def _put_record(self, rec: StageRecord) -> None:
        stages = [s for s in self.manifest["stages"] if s["name"] != rec.name]
        stages.append(rec.to_json())
        self.manifest["stages"] = stages
        self._save()

    @contextmanager
    def stage(self, name: str, *fingerprint_parts: Any) -> Iterator[StageRecord | None]:
        """Run a stage unless an identical one already finished (then yields ``None``)."""
        fp = stable_id(name, *[dumps(p) for p in fingerprint_parts])
        if self.is_done(name, fp):
            print(f"[synthrag] {name}: up to date, skipped", flush=True)
            yield None
            return
        prev = self.stage_record(name)
        resumed = bool(prev and prev["fingerprint"] == fp and prev["status"] != "done")
        if not resumed:
            # a fresh start; an interrupted run of the same stage keeps its finished rows (resume)
            shutil.rmtree(self.root / ".staging" / name, ignore_errors=True)
        rec = StageRecord(name=name, fingerprint=fp, resumed=resumed)
        self._put_record(rec)
        t0 = time.perf_counter()
        try:
            yield rec
        except BaseException as e:
            rec.status = "interrupted" if isinstance(e, KeyboardInterrupt) else f"failed: {type(e).__name__}: {e}"[:500]
            rec.seconds = time.perf_counter() - t0
            self._put_record(rec)
            raise
        rec.status = "done"
        rec.seconds = time.perf_counter() - t0
        self._put_record(rec)
        r = ", ".join(f"{k}={v}" for k, v in sorted(rec.rejected.items())) or "none"
        print(f"[synthrag] {name}: in={rec.in_} out={rec.out} rejected: {r} ({rec.seconds:.1f}s)", flush=True)
        if "llm" in rec.extra:
            print(f"[synthrag]   {llm_line(rec.extra['llm'])}", flush=True)

    def commit(self, rec: StageRecord, ds, *, table: str | None, schema: pa.Schema | None = None,
               in_count: int | None = None, totals: tuple[str, ...] = ()) -> dict[str, float]:
        """Write a stage's output: kept rows to ``table`` (if any), dropped rows to rejects.

        ``ds`` is a Ray dataset (or an Arrow table) whose rows have ``reject_reason``.
        ``in_count`` defaults to the number of rows in ``ds``; the funnel always adds up because
        ``in`` is then ``out + rejected``, and a stage that drops rows elsewhere must pass them
        through ``ds`` as rejects instead. Returns the sums of the numeric ``totals`` columns
        over every row, kept or rejected (a column the rows lack sums to 0).
        """
        staging = self.staging_dir(rec.name)
        if isinstance(ds, pa.Table) or rec.resumed_rows is None:
            # only a stage that called resume() (so ``ds`` skips the rows already staged) may add
            # to what an interrupted run staged; any other stage starts its staging afresh, or a
            # run killed while writing would commit those rows twice
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        if isinstance(ds, pa.Table):
            pq.write_table(ds, staging / "part-0.parquet")
        else:
            ds.write_parquet(str(staging))
        staged = StagedFiles(staging) or None
        reasons: dict[str, int] = {}
        sums = dict.fromkeys(totals, 0)
        total = 0
        if staged is not None:
            present = [c for c in totals if c in staged.schema.names]
            for batch in staged.batches(columns=[REJECT_REASON, *present]):
                total += batch.num_rows
                col = batch.column(0)
                for item in pc.value_counts(col.filter(pc.is_valid(col))).to_pylist():
                    reasons[item["values"]] = reasons.get(item["values"], 0) + item["counts"]
                for c in present:
                    sums[c] += pc.sum(batch.column(c)).as_py() or 0
        rejected_n = sum(reasons.values())
        if table is not None:
            self._write_split(staged, self.path(table), schema, keep=True)
        if rejected_n:
            self._write_split(staged, self.path("rejects") / rec.name, None, keep=False)
        else:
            shutil.rmtree(self.path("rejects") / rec.name, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
        rec.out = total - rejected_n
        rec.rejected = dict(sorted(reasons.items()))
        rec.in_ = rec.out + rejected_n if in_count is None else in_count
        if rec.in_ != rec.out + rejected_n:
            raise AssertionError(f"{rec.name}: funnel does not add up ({rec.in_} in, "
                                 f"{rec.out} out, {rejected_n} rejected)")
        return sums

    def staging_dir(self, stage: str) -> Path:
        """Where ``stage`` writes rows as they finish; kept when an interrupted run of the same
        stage (same fingerprint) is resumed, emptied on a fresh start (see :meth:`stage`)."""
        path = self.root / ".staging" / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def resume(self, rec: StageRecord, ds, key: str):
        """Row-level resume: drop the rows of ``ds`` whose ``key`` an interrupted run of this
        same stage already wrote to its staging folder, so they are not computed again.

        Works because stage output is written to staging as it is produced (file per block) and
        a rerun with the same fingerprint keeps that folder (see :meth:`stage`).
        """
        done = finished_keys(self.staging_dir(rec.name), key)
        rec.resumed_rows = len(done)
        return drop_keys(ds, key, done)

    def _write_split(self, staged, dest: Path, schema: pa.Schema | None, *, keep: bool) -> None:
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        cond = pc.field(REJECT_REASON).is_null() if keep else pc.field(REJECT_REASON).is_valid()
        if staged is None:
            if schema is not None:
                pq.write_table(schema.empty_table(), tmp / "part-0.parquet")
        else:  # (a schema-less table with no rows stays an empty folder: see read())
            cols = schema.names if (keep and schema is not None) else None
            out_schema = schema if (keep and schema is not None) else staged.schema

            def batches():
                for b in staged.batches(columns=cols, filter=cond):
                    t = pa.Table.from_batches([b]).cast(out_schema)
                    validate(t, out_schema)  # a kept row must satisfy the table's schema
                    yield from t.to_batches()

            pads.write_dataset(batches(), tmp, format="parquet", schema=out_schema,
                               basename_template="part-{i}.parquet",
                               max_rows_per_file=200_000, max_rows_per_group=50_000,
                               # staged files hold blocks of a few rows; without a floor every
                               # block became a row group (10k of ~19 rows, 25 MB footers at 1M)
                               min_rows_per_group=10_000,
                               existing_data_behavior="overwrite_or_ignore")
            if not any(tmp.glob("*.parquet")):
                pq.write_table(out_schema.empty_table(), tmp / "part-0.parquet")
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)

    # ------------------------------------------------------------------ exports
    def export_jsonl(self, table: str, name: str) -> Path:
        """Write a table as JSON lines under ``exports/`` (streamed batch by batch)."""
        out = self.path("exports") / name
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            if self.has(table):
                for batch in pads.dataset(self.path(table), format="parquet").to_batches():
                    for row in batch.to_pylist():
                        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
        return out


def llm_line(cost: dict) -> str:
    """One line of where an LLM stage's time went (see pipelines.stages.stage.llm_cost)."""
    share = cost["cached_prompt_tokens"] / cost["prompt_tokens"] if cost["prompt_tokens"] else 0.0
    return (f"LLM: {cost['calls']:,} calls ({cost['retries']:,} retries), {cost['prompt_tokens']:,} prompt "
            f"tokens ({share:.0%} reused), {cost['generated_tokens']:,} generated, {cost['seconds']:.1f} engine-s")


def reject(reason: str, detail: Any = None) -> dict:
    """The two columns a dropped row carries."""
    if detail is not None and not isinstance(detail, str):
        detail = dumps(detail)
    return {REJECT_REASON: reason, REJECT_DETAIL: detail}


KEEP = {REJECT_REASON: None, REJECT_DETAIL: None}


class StagedFiles:
    """The complete Parquet files of a staging folder, read one file at a time.

    A file cut off by a crash (no valid footer) is deleted: its rows are simply computed again.
    A single ``pyarrow.dataset`` over thousands of staged files keeps every file's parsed footer
    alive, and Ray writes a row group per small block, so at 1M chunks the driver grew by GBs just
    counting one column (0.9 GB for a 1.2M-row, 710-file replica; 0.2 GB file by file). Files
    whose types differ (a column all null in one block) are read as the unified schema.
    """

    def __init__(self, folder: Path):
        self.files: list[Path] = []
        schemas = []
        for f in sorted(Path(folder).glob("*.parquet")):
            try:
                schemas.append(pq.read_schema(f))  # reads (and so checks) the footer
            except Exception:
                f.unlink(missing_ok=True)
                continue
            self.files.append(f)
        self.schema = pa.unify_schemas(schemas, promote_options="permissive") if schemas else None

    def __len__(self) -> int:
        return len(self.files)

    def batches(self, columns: list[str] | None = None, filter=None) -> Iterator[pa.RecordBatch]:
        for f in self.files:
            yield from pads.dataset(f, format="parquet", schema=self.schema).to_batches(
                columns=columns, filter=filter, batch_readahead=4, fragment_readahead=1)


def finished_keys(folder: Path, key: str) -> pa.Array:
    """The ``key`` values of the rows already written to ``folder`` (one column read)."""
    staged = StagedFiles(folder)
    if not staged:
        return pa.array([], pa.string())
    return pa.chunked_array([b.column(0) for b in staged.batches(columns=[key])],
                            staged.schema.field(key).type).combine_chunks()


def drop_keys(ds, key: str, done: pa.Array):
    """``ds`` without the rows whose ``key`` is in ``done`` (vectorised; ``done`` ships once)."""
    if len(done) == 0:
        return ds

    def keep(batch: pa.Table) -> pa.Table:
        return batch.filter(pc.invert(pc.is_in(batch.column(key), value_set=done.cast(batch.schema.field(key).type))))

    return ds.map_batches(keep, batch_format="pyarrow")
