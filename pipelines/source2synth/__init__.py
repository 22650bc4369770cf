"""Source2Synth (Lupidi et al. 2024, arXiv 2409.08239): synthetic data grounded in real sources,
curated by a model fine-tuned on half of it.

Read top to bottom like the paper's Figure 1 (source → seed → example → curation); every arrow is
a stage with its funnel in the manifest and its dropped rows, with reasons, in ``rejects/<stage>/``:

    multi-hop (§3.1)  chunks ──NER──▶ entity index ──seed entity of doc A, doc B naming it──▶ seeds
                      ──q1 (A, answer = seed)──▶ ──q2 (B, about the seed)──▶ ──merge──▶ 2-hop QA
    table QA (§3.2)   --tables ──run-local SQLite──▶ ──seed fact + value──▶ ──SQL──▶ EXECUTED (sandbox)
                      ──▶ answer = result ──question from SQL + answer──▶ table QA
    curation (§2.2)   all examples ──seeded 50/50 split──▶ slice 0 ──LoRA SFT──▶ LLMSynth
                      slice 1 ──LLMSynth, k = 3 tries, soft match──▶ kept (+ imputed reasoning)
                      ──▶ examples/ ──▶ exports/sft_source2synth.jsonl, exports/source2synth_qa.jsonl

The pieces are ``multihop``, ``tableqa``, ``curation`` and ``match`` beside this file, the tables
in ``tables`` and the SQL sandbox in ``sandbox``; the settings are in ``config``.

Fidelity to the paper (each step, what we do, where we differ and why): docs/FIDELITY.md#source2synth.
"""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from actors import llm_pool
from pipelines.core.run import KEEP, Run
from pipelines.core.schema import (
    EXAMPLES,
    REJECT_DETAIL,
    REJECT_REASON,
    dumps,
    stable_id,
    staging,
)
from pipelines.source2synth import curation as cur
from pipelines.source2synth import multihop as mh
from pipelines.source2synth import tableqa as tq
from pipelines.stages.quality import seed_chunks
from pipelines.stages.stage import build_stage, llm_stage
from pipelines.stages.stage import fingerprints as _fp

if TYPE_CHECKING:
    from pipelines.registry import RunConfig

PARTS = {"multi_hop": ("source2synth_mhqa", "source2synth_mhqa"), "table_qa": ("source2synth_tqa", "source2synth_tqa")}


# ----------------------------------------------------------------------------- helpers
def _read(run: Run, table: str, key: str):
    """A table of this run as a dataset; an empty one (``key`` only) when nothing was kept."""
    import ray.data

    if run.count(table):
        return run.read(table)
    return ray.data.from_arrow(pa.table({key: pa.array([], pa.string())}))


def _examples_or_empty(run: Run, table: str, fn):
    if not run.count(table):
        return staging(EXAMPLES).empty_table()
    return run.read(table).map_batches(fn, batch_format="pyarrow")


def _with_keep(b: pa.Table) -> pa.Table:
    for k in KEEP:
        b = b.append_column(k, pa.nulls(b.num_rows, pa.string()))
    return b


def _cap(*caps: int | None) -> int | None:
    given = [c for c in caps if c is not None]
    return min(given) if given else None


def _source_fingerprint(path: Path) -> list:
    """A table source's identity for the cache: each file's path, size and mtime."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


# ----------------------------------------------------------------------------- §3.1 multi-hop
def multi_hop(run: Run, cfg: RunConfig, limit: int | None) -> None:
    import ray

    from actors.ner import NER

    m = cfg.source2synth.multihop

    def mentions():
        ds = run.read("chunks", columns=["chunk_id", "doc_id", "title", "text"])
        wanted = set(seed_chunks(run, m.max_index_chunks, cfg.seed))
        ds = ds.filter(lambda r: r["chunk_id"] in wanted)
        ds = ds.map_batches(NER, fn_constructor_kwargs={"labels": m.ner_labels}, batch_size=256,
                            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2),
                            num_cpus=1)
        return ds.map_batches(_with_keep, batch_format="pyarrow")

    build_stage(run, "source2synth_ner", ["quality"], mentions, "source2synth_mentions", schema=None,
                extra_fp=(m.ner_labels, m.max_index_chunks, cfg.seed))

    with run.stage("source2synth_seeds", *_fp(run, "source2synth_ner"), limit, m.max_seeds, m.max_passage_chars,
                   m.min_entity_chars, cfg.seed) as rec:
        if rec is not None:
            rows = run.read_arrow("source2synth_mentions",
                                  columns=["chunk_id", "doc_id", "title", "text", "mentions"]).to_pylist()
            index = mh.entity_index(rows, m.min_entity_chars)
            chosen = set(run.sample_keys("source2synth_mentions", "chunk_id", _cap(limit, m.max_seeds), cfg.seed))
            seeds = mh.choose_seeds([r for r in rows if r["chunk_id"] in chosen], index, rows, cfg.seed,
                                    m.max_passage_chars)
            run.commit(rec, tq.rows_table(seeds, "seed_id"), table="source2synth_seeds")
            rec.extra.update(chunks_indexed=len(rows), entities=len(index),
                             entities_in_two_documents=sum(1 for e in index.values()
                                                           if len(set(e["chunks"].values())) > 1),
                             via={v: sum(1 for s in seeds if s.get("via") == v) for v in ("entity_index", "text_search")})

    llm_stage(run, cfg, "source2synth_q1", ["source2synth_seeds"], lambda: _read(run, "source2synth_seeds", "seed_id"),
              "seed_id", "source2synth/q1", "source2synth_q1", check=mh.check_q1)
    llm_stage(run, cfg, "source2synth_q2", ["source2synth_q1"],
              lambda: _read(run, "source2synth_q1", "seed_id").map_batches(mh.q2_inputs, batch_format="pyarrow"),
              "seed_id", "source2synth/q2", "source2synth_q2", check=mh.check_q2)
    llm_stage(run, cfg, "source2synth_merge", ["source2synth_q2"],
              lambda: _read(run, "source2synth_q2", "seed_id").map_batches(mh.merge_inputs, batch_format="pyarrow"),
              "seed_id", "source2synth/merge", "source2synth_merge", check=mh.check_merge)
    build_stage(run, "source2synth_mhqa", ["source2synth_merge"],
                lambda: _examples_or_empty(run, "source2synth_merge", mh.build_examples), "source2synth_mhqa")


# ----------------------------------------------------------------------------- §3.2 table QA
def table_qa(run: Run, cfg: RunConfig, limit: int | None) -> None:
    from pipelines.source2synth.tables import prepare_database

    t, src = cfg.source2synth.tables_qa, Path(cfg.source2synth.tables).expanduser().resolve()
    db = run.path("source2synth") / "tables.sqlite"
    with run.stage("source2synth_tables", _source_fingerprint(src), limit, t.max_tables, t.seeds_per_table,
                   t.describe_rows, cfg.seed) as rec:
        if rec is not None:
            infos = prepare_database(src, db, overwrite=True)  # the run's own copy; src is only read
            cap = _cap(limit, t.max_tables)
            chosen = sorted(sorted(infos, key=lambda k: stable_id(cfg.seed, "table", k))[:cap])
            rows = tq.table_rows(infos, chosen, db, seed=cfg.seed, seeds_per_table=t.seeds_per_table,
                                 describe_rows=t.describe_rows)
            run.commit(rec, tq.rows_table(rows, "fact_id"), table="source2synth_table_seeds")
            rec.extra.update(source=str(src), database=str(db), tables_read=len(infos), tables_seeded=len(chosen))

    llm_stage(run, cfg, "source2synth_facts", ["source2synth_tables"],
              lambda: _read(run, "source2synth_table_seeds", "fact_id"), "fact_id", "source2synth/fact",
              "source2synth_facts", check=tq.check_fact)
    llm_stage(run, cfg, "source2synth_sql", ["source2synth_facts"],
              lambda: _read(run, "source2synth_facts", "fact_id").map_batches(tq.sql_inputs, batch_format="pyarrow"),
              "fact_id", "source2synth/sql", "source2synth_sql",
              check=partial(tq.check_sql, timeout_s=t.timeout_s, max_rows=t.max_rows,
                            max_values=t.max_answer_values, require_seed_value=t.require_seed_value))
    with run.stage("source2synth_execute", *_fp(run, "source2synth_sql"), t.timeout_s, t.max_rows,
                   t.max_answer_values, t.require_seed_value) as rec:
        if rec is not None:
            out = tq.execute(run.read_arrow("source2synth_sql"), timeout_s=t.timeout_s, max_rows=t.max_rows,
                             max_values=t.max_answer_values, require_seed_value=t.require_seed_value)
            run.commit(rec, out, table="source2synth_executed")
            rec.extra["sql"] = {"executed": rec.in_, "answered": rec.out, "failed": dict(rec.rejected)}
    llm_stage(run, cfg, "source2synth_table_question", ["source2synth_execute"],
              lambda: _read(run, "source2synth_executed", "fact_id").map_batches(tq.question_inputs,
                                                                                 batch_format="pyarrow"),
              "fact_id", "source2synth/table_question", "source2synth_table_questions", check=tq.check_question)
    build_stage(run, "source2synth_tqa", ["source2synth_table_question"],
                lambda: _examples_or_empty(run, "source2synth_table_questions", tq.build_examples), "source2synth_tqa")


# ----------------------------------------------------------------------------- §2.2 curation
def split(run: Run, cfg: RunConfig, tasks: list[str]) -> None:
    """Every generated example, with its slice (seeded, per task) → ``source2synth_generated``."""
    c = cfg.source2synth.curation
    with run.stage("source2synth_split", *_fp(run, *[PARTS[t][0] for t in tasks]), c.slice_fraction,
                   cfg.seed) as rec:
        if rec is None:
            return
        rows = [r for t in tasks for r in run.read_arrow(PARTS[t][1]).to_pylist()]
        ids: dict[str, list[str]] = {}
        for r in rows:
            ids.setdefault(r["task"], []).append(r["example_id"])
        slices = cur.split_slices(ids, c.slice_fraction, cfg.seed)
        table = pa.Table.from_pylist([{**r, "slice": slices[r["example_id"]], **KEEP} for r in rows],
                                     schema=staging(cur.GENERATED))
        run.commit(rec, table, table="source2synth_generated", schema=cur.GENERATED)
        rec.extra["slices"] = {f"slice_{s}": {t: sum(1 for r in rows if r["task"] == t and slices[r["example_id"]] == s)
                                              for t in sorted(ids)} for s in (0, 1)}


def finetune(run: Run, cfg: RunConfig) -> Path | None:
    """LLMSynth: the SFT of ``training/sft.py`` (LoRA on the embedded model) on slice 0."""
    from training.sft import SFTConfig, train

    c = cfg.source2synth.curation
    root = run.path("source2synth")
    out = root / "llmsynth"
    keys = ("base", "lora", "epochs", "max_steps", "batch_size", "lr", "max_length", "workers")
    with run.stage("source2synth_finetune", *_fp(run, "source2synth_split"), c.model_dump(include=set(keys)),
                   cfg.prompts_dir, cfg.seed) as rec:
        if rec is not None:
            slice0 = [r for r in run.read_arrow("source2synth_generated").to_pylist() if r["slice"] == 0]
            records = [cur.chat_record(r, prompt_search=cfg.prompt_search(),
                                       table_rows=cfg.source2synth.tables_qa.describe_rows) for r in slice0]
            rec.in_ = rec.out = len(records)
            if not rec.resumed:  # a new slice 0: train afresh (an interrupted run resumes its checkpoints)
                shutil.rmtree(out, ignore_errors=True)
            if not records:
                rec.extra["llmsynth"] = {"trained": False, "why": "slice 0 is empty"}
            else:
                root.mkdir(parents=True, exist_ok=True)
                data = root / "slice0_sft.jsonl"
                data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
                llm_pool.release()  # training needs the CPUs/GPUs the generation servers hold
                m = train(SFTConfig(data=str(data), base=c.base, out=str(out), lora=c.lora, workers=c.workers,
                                    epochs=c.epochs, max_steps=c.max_steps, batch_size=c.batch_size, lr=c.lr,
                                    max_length=c.max_length, dev_fraction=0.0, seed=cfg.seed))
                rec.extra["llmsynth"] = {"trained": True, "model_dir": m["model_dir"], "records": len(records),
                                         "global_step": m["global_step"], "epochs": m["epochs"],
                                         "seconds": m["driver_seconds"]}
    model = out / "model"
    return model if model.is_dir() else None


def _slice1_rows(run: Run, cfg: RunConfig) -> pa.Table:
    """Slice-1 examples as rows of LLMSynth's answer prompts."""
    gen = run.read_arrow("source2synth_generated")
    if gen.num_rows:
        gen = gen.filter(pc.equal(gen.column("slice"), 1))
    return cur.answer_rows(gen, tolerance=cfg.source2synth.curation.numeric_tolerance,
                           table_rows=cfg.source2synth.tables_qa.describe_rows)


def filter_slice1(run: Run, cfg: RunConfig, model_dir: Path | None) -> None:
    """LLMSynth answers each slice-1 question up to k times; a matching try keeps it."""
    import ray.data

    c = cfg.source2synth.curation
    if model_dir is None:  # nothing to curate with: every slice-1 example is a reject, with the reason
        def unjudged() -> pa.Table:
            t = _slice1_rows(run, cfg)
            why = dumps({"why": "slice 0 was empty, so LLMSynth was not trained"})
            return t.append_column(REJECT_REASON, pa.array(["no_intermediate_model"] * t.num_rows, pa.string())
                                   ).append_column(REJECT_DETAIL, pa.array([why] * t.num_rows, pa.string()))

        build_stage(run, "source2synth_curate", ["source2synth_finetune"], unjudged, "source2synth_curate_answers",
                    schema=None)
        return
    llm = cfg.llm.model_copy(update={"engine": "transformers", "model": str(model_dir), "max_retries": c.tries - 1,
                                     "retry_temperature": c.retry_temperature, "max_tokens": c.max_tokens})
    llm_stage(run, cfg.model_copy(update={"llm": llm}), "source2synth_curate", ["source2synth_finetune"],
              lambda: ray.data.from_arrow(_slice1_rows(run, cfg)), "example_id",
              {p: p for p in cur.PROMPTS.values()}, "source2synth_curate_answers", check=cur.check_answer,
              prompt_key="prompt", extra_fp=(c.tries, c.retry_temperature, c.numeric_tolerance, c.max_tokens))


def curated_set(run: Run, cfg: RunConfig, curated: bool) -> None:
    """The curated examples (slice 1 kept by LLMSynth, imputed where asked) → ``examples/``.

    Slice 0 trained LLMSynth and is left out (the paper's curated set is the filtered slice 1), as
    rejects ``used_for_llmsynth``, unless ``keep_slice0``; without curation every generated
    example is kept. Slice-1 examples LLMSynth did not answer are in ``rejects/source2synth_curate``."""
    c = cfg.source2synth.curation
    upstream = ["source2synth_curate"] if curated else ["source2synth_split"]
    with run.stage("source2synth_curated", *_fp(run, *upstream), curated, c.impute, c.keep_slice0) as rec:
        if rec is None:
            return
        gen = run.read_arrow("source2synth_generated").to_pylist()
        answers = {r["example_id"]: r for r in run.read_arrow("source2synth_curate_answers").to_pylist()} \
            if curated else {}
        rows, imputed = [], set()
        for ex in gen:
            ex = dict(ex)
            s = ex.pop("slice")
            meta = {**json.loads(ex["meta"] or "{}"), "slice": s}
            if not curated or (s == 0 and c.keep_slice0):
                rows.append({**ex, "meta": dumps(meta), **KEEP})
            elif s == 0:
                rows.append({**ex, "meta": dumps(meta), REJECT_REASON: "used_for_llmsynth",
                             REJECT_DETAIL: dumps({"slice": 0})})
            elif ex["example_id"] in answers:
                ans = answers[ex["example_id"]]
                reply = json.loads(ans["llm_output"])
                _, how = cur.answer_matches({**ans, "targets": list(ans["targets"] or [])}, reply)
                ex, did = cur.impute({**ex, "meta": dumps(meta)}, reply, c.impute)
                if did:
                    imputed.add(ex["example_id"])
                meta["curation"] = {"tries": ans["attempts"], "matched_by": how, "imputed": did,
                                    "llmsynth_answer": reply.get("answer")}
                rows.append({**ex, "meta": dumps(meta), "stage": "source2synth_curated", **KEEP})
        table = pa.Table.from_pylist(rows, schema=staging(EXAMPLES)) if rows else staging(EXAMPLES).empty_table()
        run.commit(rec, table, table="examples", schema=EXAMPLES)
        if curated:
            rec.extra["retention"] = cur.retention(gen, set(answers), imputed, trained=_trained(run))
        rec.extra["funnel"] = funnel(run)


def _trained(run: Run) -> bool:
    rec = run.stage_record("source2synth_finetune") or {}
    return bool((rec.get("llmsynth") or {}).get("trained"))


def funnel(run: Run) -> dict:
    """The method's funnel in one place: entries, seeds, examples per stage, SQL outcomes."""
    st = {s["name"]: s for s in run.manifest["stages"]}

    def out(name: str):
        return st[name]["out"] if name in st else None

    mh_ = {"chunks_indexed": (st.get("source2synth_seeds") or {}).get("chunks_indexed"),
           "entities": (st.get("source2synth_seeds") or {}).get("entities"),
           "seeds": out("source2synth_seeds"), "q1": out("source2synth_q1"), "q2": out("source2synth_q2"),
           "merged": out("source2synth_merge"), "examples": out("source2synth_mhqa")}
    tq_ = {"tables": (st.get("source2synth_tables") or {}).get("tables_read"), "fact_seeds": out("source2synth_tables"),
           "facts": out("source2synth_facts"), "sql_written": out("source2synth_sql"),
           "sql": (st.get("source2synth_execute") or {}).get("sql"), "questions": out("source2synth_table_question"),
           "examples": out("source2synth_tqa")}
    return {"multi_hop": mh_, "table_qa": tq_, "generated": out("source2synth_split"),
            "llmsynth_tries": (st.get("source2synth_curate") or {}).get("rejected"),
            "curated": out("source2synth_curated")}


# ----------------------------------------------------------------------------- exports
def exports(run: Run, cfg: RunConfig) -> None:
    """The curated set as SFT chat records (``synthrag train generator --data RUN``) and QA jsonl."""
    examples = run.read_arrow("examples").to_pylist()
    out = run.path("exports")
    out.mkdir(parents=True, exist_ok=True)
    sft, qa = out / "sft_source2synth.jsonl", out / "source2synth_qa.jsonl"
    rows = cfg.source2synth.tables_qa.describe_rows
    with open(sft, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(cur.chat_record(ex, prompt_search=cfg.prompt_search(), table_rows=rows),
                               ensure_ascii=False) + "\n")
    with open(qa, "w", encoding="utf-8") as f:
        for ex in examples:
            meta = json.loads(ex["meta"] or "{}")
            f.write(json.dumps({"id": ex["example_id"], "task": ex["task"], "question": ex["query"],
                                "answer": ex["answer"], "reasoning": ex["reasoning"], "sql": ex["sql"],
                                "passages": meta.get("passages"), "table_id": meta.get("table_id"),
                                "slice": meta.get("slice"), "imputed": (meta.get("curation") or {}).get("imputed", False)},
                               ensure_ascii=False) + "\n")
    run.export_jsonl("examples", "examples.jsonl")
    run.manifest.setdefault("exports", {})["source2synth"] = {"sft": str(sft), "qa": str(qa), "records": len(examples)}


# ----------------------------------------------------------------------------- the method
def source2synth(run: Run, cfg: RunConfig, *, limit: int | None) -> None:
    """The whole method: generate (multi-hop from the corpus, table QA from ``--tables``), curate."""
    s = cfg.source2synth
    tasks = []
    if s.multihop.enabled:
        multi_hop(run, cfg, limit)
        tasks.append("multi_hop")
    if s.tables_qa.enabled and s.tables is not None:
        table_qa(run, cfg, limit)
        tasks.append("table_qa")
    split(run, cfg, tasks)
    if s.curation.enabled:
        filter_slice1(run, cfg, finetune(run, cfg))
    curated_set(run, cfg, s.curation.enabled)
    exports(run, cfg)
