"""The two ways a stage runs: through the LLM actor pool (:func:`llm_stage`) or as a plain
transformation (:func:`build_stage`). Both are resumable, fingerprinted by their upstream stages
and settings, and account for every row (kept, or in ``rejects/<stage>/`` with its reason).
Every method builds its pipeline from these.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.dataset as pads

from actors.crash_journal import CrashJournal
from actors.llm import COST_COLUMNS, llm_map
from pipelines.core.run import KEEP, Run
from pipelines.core.schema import EXAMPLES


def fingerprints(run: Run, *names: str) -> list[str]:
    """The fingerprints of upstream stages: a stage reruns when any of them changed."""
    return [run.stage_record(n)["fingerprint"] for n in names]


def llm_stage(run: Run, cfg, name: str, upstream: list[str], rows: Callable, key: str,
              prompt, table: str, *, check=None, prompt_key: str | None = None, extra_fp: tuple = (),
              then: Callable[[pa.Table], pa.Table] | None = None, prepare: Callable | None = None) -> None:
    """An LLM stage: ``rows()`` gives the prepared input (a Ray dataset or an Arrow table); rows already written by an
    interrupted run of the same stage are skipped (``key``); replies (or rejects) go to ``table``.

    ``prepare`` maps the rows left to do (after the resume) before the LLM; ``then`` maps the
    LLM's output batches (pyarrow) before they are written, and keeps ``key``, the reject columns
    and :data:`~actors.llm.COST_COLUMNS` / ``attempts`` (summed into the manifest's ``llm``)."""
    with run.stage(name, *fingerprints(run, *upstream), *extra_fp, cfg.llm.fingerprint(), cfg.prompts_dir) as rec:
        if rec is None:
            return
        src = rows()
        ds = run.resume(rec, ray_from_arrow(src) if isinstance(src, pa.Table) else src, key)
        if prepare is not None:
            ds = ds.map_batches(prepare, batch_format="pyarrow")
        n = ds.count()
        if not n:  # nothing (left) to do: an empty table, and the rows an interrupted run wrote
            run.commit(rec, ray_from_arrow(no_rows(key)), table=table)
            return
        ds = llm_map(ds, llm=cfg.llm, prompt=prompt, stage=name, check=check,
                     prompt_search=cfg.prompt_search(), prompt_key=prompt_key, rows=n,
                     journal_dir=journal_dir(run, name))
        if then is not None:
            ds = ds.map_batches(then, batch_format="pyarrow")
        rec.extra["llm"] = llm_cost(run.commit(rec, ds, table=table, totals=(*COST_COLUMNS, "attempts")), rec.in_)
        if rec.extra["llm"]["candidates"] > rec.extra["llm"]["calls"]:  # best-of-n was on
            rec.extra["llm"]["tries"] = tries_histogram(run, table)
        report_recoveries(run, rec)


def no_rows(key: str) -> pa.Table:
    """An empty stage output: the key column and the reject columns, no rows."""
    return pa.table({key: pa.array([], pa.string()), **{k: pa.array([], pa.string()) for k in KEEP}})


def llm_cost(sums: dict, rows: int) -> dict:
    """Where an LLM stage's time went, for its manifest entry: engine calls per row (a retry is
    one more), prompt tokens and how many of them a reused prefix spared, generated tokens, and
    engine seconds summed over the pool's actors (rows an interrupted run wrote included)."""
    calls = int(sums["attempts"])
    return {"calls": calls, "retries": max(0, calls - rows), "prompt_tokens": int(sums["llm_prompt_tokens"]),
            "cached_prompt_tokens": int(sums["llm_cached_tokens"]),
            "generated_tokens": int(sums["llm_generated_tokens"]), "candidates": int(sums["llm_candidates"]),
            "seconds": round(sums["llm_seconds"], 2),
            "seconds_per_row": round(sums["llm_seconds"] / rows, 3) if rows else 0.0}


def tries_histogram(run: Run, table: str) -> dict[str, int]:
    """Kept rows by the best-of-n candidate that was kept (1 = the first)."""
    if not run.has(table) or "llm_tries" not in pads.dataset(run.path(table), format="parquet").schema.names:
        return {}
    col = run.read_arrow(table, columns=["llm_tries"]).column(0).to_pylist()
    return {str(k): v for k, v in sorted(Counter(c for c in col if c).items())}


def journal_dir(run: Run, stage: str) -> Path:
    """Where an LLM stage's actors journal the rows they hold (see actors/crash_journal.py)."""
    return run.path(".journal") / stage


def report_recoveries(run: Run, rec) -> None:
    """Say, in synthrag's words, when an LLM worker died and its rows were rerun (Ray restarts
    the actor; the journal reruns the rows it held one by one and rejects a poison row)."""
    r = CrashJournal(journal_dir(run, rec.name)).recoveries()
    if r["rows"]:
        rec.extra["recovered_after_crash"] = r
        print(f"[synthrag] {rec.name}: an LLM worker died while holding rows; Ray restarted it and "
              f"synthrag reran those {r['rows']} row(s) one at a time ({r['rejected']} rejected as actor_crashed)",
              flush=True)


def ray_from_arrow(table: pa.Table):
    import ray.data

    return ray.data.from_arrow(table)


def build_stage(run: Run, name: str, upstream: list[str], build: Callable, table: str,
                schema: pa.Schema = EXAMPLES, extra_fp: tuple = (), report: Callable[[], dict] | None = None) -> None:
    """A stage without a model: ``build()`` returns a dataset (or Arrow table) of rows with
    ``reject_reason``; kept rows are written to ``table`` with ``schema``. ``report()``, called
    after the commit, adds its figures to the stage's manifest entry."""
    with run.stage(name, *fingerprints(run, *upstream), *extra_fp) as rec:
        if rec is not None:
            run.commit(rec, build(), table=table, schema=schema)
            if report is not None:
                rec.extra.update(report())


def answer_sources(run: Run, table: str, by: tuple[str, ...] = ()) -> dict:
    """How many kept rows of ``table`` each ``answer_source`` wrote (``model``, ``facts``,
    ``template``), optionally under ``by`` columns joined with ``/`` (null: ``full``)."""
    if not run.count(table):
        return {}
    rows = run.read_arrow(table, columns=["answer_source", *by]).to_pylist()
    if not by:
        return dict(sorted(Counter(r["answer_source"] or "unknown" for r in rows).items()))
    out: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        out["/".join(str(r[b] or "full") for b in by)][r["answer_source"] or "unknown"] += 1
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}
