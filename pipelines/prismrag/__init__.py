"""PrismRAG (Kachuee et al., 2025): distractor-resilient, strategized RAG fine-tuning data.

Read top to bottom like the paper's Figures 2 and 4; every arrow is a stage with its funnel in
the manifest and its dropped rows in ``rejects/<stage>/``:

    chunks ──references (a chunk or a group of one document's chunks, cut to a word budget)
           ──seed_qa──▶ question + answer grounded in the golden reference          §4.1
    seeds  ──distractor_r ─▶ key facts, open question, distractor passage            §4.2 step 1
                             (small model: code swaps the passage's entities for the corpus's)
           ──critique_r ───▶ relevance / distraction / format 1-5 + feedback         §4.2 step 2
                             (small model: rules)
           ──round_r ──────▶ attempts; failures (with feedback) go to round r+1, ≤ 5 rounds
           ──distractor_select──▶ question + [golden, distractor] (seeded order) + answer  §4.2 step 3
    seeds  ──strategize_r ─▶ strategy → reasoning → answer (r ≤ 6 stochastic, then revision) §4.3 steps 1, 4
           ──thought_eval_r / answer_eval_r ──▶ scores 1-4 + analyses                §4.3 steps 2-3
                             (small model: rules)
           ──round_r ──────▶ attempts; failures (with the analysis) go to round r+1, ≤ 10 rounds
           ──strategize_select──▶ first attempt with both scores 4                   §4.3 step 5
    both ──examples──▶ examples/, exports/sft_prismrag.jsonl (`synthrag train generator --data RUN`)

Every attempt of both loops is a row of its round's table (``prismrag_*_round_r<N>``) with its
scores, and is listed, with its scores, in the kept example's ``meta.attempts`` or in the
reject's detail. The funnel (seeds, attempt histograms, pass rate per critique score, stochastic
vs revised successes) is the ``prismrag_examples`` stage's ``funnel`` in manifest.json and a
table in report.html. ``synthrag eval factuality`` (pipelines/eval/factuality.py) measures a
generator the way the paper does (§5.1.2).

Fidelity to the paper (each step, what we do, where we differ and why): docs/FIDELITY.md#prismrag.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipelines.core.groups import group_map
from pipelines.core.run import KEEP, Run
from pipelines.core.schema import EXAMPLES, staging
from pipelines.prismrag import distractor as dist
from pipelines.prismrag import export as sft
from pipelines.prismrag import funnel, rules
from pipelines.prismrag import seed as sq
from pipelines.prismrag import strategize as st
from pipelines.prismrag.loops import next_round_needed, strategy_mode
from pipelines.stages.quality import seed_chunks
from pipelines.stages.stage import build_stage, llm_stage, no_rows
from pipelines.stages.stage import fingerprints as _fp

if TYPE_CHECKING:
    from pipelines.registry import RunConfig


# ----------------------------------------------------------------------------- helpers
def _read(run: Run, table: str):
    import ray.data

    if run.count(table):
        return run.read(table)
    return ray.data.from_items([])


def _reseeded(cfg: RunConfig, r: int) -> RunConfig:
    """The config with round ``r``'s LLM seed: every round samples anew (§4.3 step 4)."""
    return cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"seed": cfg.llm.seed + 100 * r})})


def _gather(run: Run, sources: list[tuple], schema: pa.Schema):
    """Union of ``(table, mapper, row filter or None)`` sources mapped to ``schema``."""
    parts = []
    for table, mapper, keep in sources:
        if not run.count(table):
            continue
        ds = run.read(table)
        if keep is not None:
            ds = ds.filter(keep)
        parts.append(ds.map_batches(mapper, batch_format="pyarrow"))
    if not parts:
        return schema.empty_table()
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def rule_stage(run: Run, name: str, upstream: list[str], rows, fn, key: str = "seed_id", extra_fp: tuple = ()) -> None:
    """A loop step where code stands in for an LLM (:mod:`pipelines.prismrag.rules`): ``fn`` maps
    batches of ``rows()`` to the LLM stage's columns; same table name, funnel and rejects."""
    def build():
        ds = rows()
        if not ds.count():
            return no_rows(key)
        return ds.map_batches(fn, batch_format="pyarrow")

    build_stage(run, name, upstream, build, name, schema=None, extra_fp=extra_fp)


def _failing(run: Run, table: str) -> int:
    if not run.count(table):
        return 0
    return pads.dataset(run.path(table), format="parquet").count_rows(filter=pc.field("passed") == pc.scalar(False))


def _select(run: Run, tables: list[str], fn, **kwargs):
    parts = [run.read(t) for t in tables if run.count(t)]
    if not parts:
        return staging(EXAMPLES).empty_table()
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    return group_map(ds, "seed_id", fn, n_rows=sum(run.count(t) for t in tables), schema=staging(EXAMPLES),
                     fn_kwargs=kwargs)


# ----------------------------------------------------------------------------- §4.1 seed QA
def seed_qa(run: Run, cfg: RunConfig, limit: int | None) -> None:
    p = cfg.prismrag
    uc = p.user_context
    kwargs = {"chunks_per_reference": p.seed_qa.chunks_per_reference, "max_words": p.seed_qa.max_reference_words,
              "user_time": uc.time, "user_location": uc.location}

    def references():
        ds = run.read("chunks", columns=["chunk_id", "doc_id", "title", "text", "char_start"])
        if p.seed_qa.chunks_per_reference == 1:
            wanted = set(seed_chunks(run, limit, cfg.seed))
            ds = ds.filter(lambda r: r["chunk_id"] in wanted)
            return ds.map_batches(sq.reference_rows, batch_format="pyarrow", fn_kwargs=kwargs)
        if limit:
            wanted = set(run.sample_keys("documents", "doc_id", limit, cfg.seed))
            ds = ds.filter(lambda r: r["doc_id"] in wanted)
        return group_map(ds, "doc_id", sq.reference_rows, n_rows=run.count("chunks"), fn_kwargs=kwargs)

    llm_stage(run, cfg, "prismrag_seed_qa", ["quality"], references, "seed_id", "prismrag/seed_qa", "prismrag_seeds",
              check=sq.check_seed, then=sq.seed_columns,
              extra_fp=(limit, cfg.seed, p.seed_qa.model_dump(), uc.model_dump()))


# ----------------------------------------------------------------------------- §4.2 distractors
def entity_pool(run: Run, cfg: RunConfig) -> None:
    """For the ``substitute`` writer: spaCy's mentions in every seed's golden reference, and the
    pool of the corpus's entities by label (from a seeded sample of chunks) to swap them with."""
    import ray

    from actors.ner import NER

    d = cfg.prismrag.distractor

    def ner(ds, column: str):
        return ds.map_batches(NER, fn_constructor_kwargs={"text_column": column}, batch_size=256,
                              batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2),
                              num_cpus=1).map_batches(_with_keep, batch_format="pyarrow")

    def seed_mentions():
        if not run.count("prismrag_seeds"):
            return no_rows("seed_id")
        return ner(run.read("prismrag_seeds"), "reference")

    build_stage(run, "prismrag_mentions", ["prismrag_seed_qa"], seed_mentions, "prismrag_seed_mentions", schema=None)
    with run.stage("prismrag_entity_pool", *_fp(run, "quality"), d.pool_chunks, d.pool_per_label, cfg.seed) as rec:
        if rec is not None:
            wanted = set(seed_chunks(run, d.pool_chunks, cfg.seed))
            ds = run.read("chunks", columns=["chunk_id", "text"]).filter(lambda r: r["chunk_id"] in wanted)
            mentions = ner(ds, "text").select_columns(["mentions"]).take_all()
            pool = rules.entity_pool([m["mentions"] for m in mentions], d.pool_per_label, cfg.seed)
            rows = [{"label": k, "text": t, **KEEP} for k, ts in pool.items() for t in ts]
            run.commit(rec, pa.Table.from_pylist(rows, schema=POOL), table="prismrag_entity_pool", in_count=len(rows))
            rec.extra.update(chunks=len(mentions), entities={k: len(v) for k, v in pool.items()})


POOL = pa.schema([("label", pa.string()), ("text", pa.string()), ("reject_reason", pa.string()),
                  ("reject_detail", pa.string())])


def _pool(run: Run) -> dict[str, list[str]]:
    pool: dict[str, list[str]] = {}
    if run.count("prismrag_entity_pool"):
        for r in run.read_arrow("prismrag_entity_pool", columns=["label", "text"]).to_pylist():
            pool.setdefault(r["label"], []).append(r["text"])
    return pool


def distractor_loop(run: Run, cfg: RunConfig) -> list[str]:
    """Generate → critique → decide, one round per attempt, over the seeds still failing."""
    d = cfg.prismrag.distractor
    substitute = d.writer == "substitute"
    if substitute:
        entity_pool(run, cfg)
        pool = _pool(run)  # read once: every round draws from it
    prev, rounds = ("prismrag_mentions" if substitute else "prismrag_seed_qa"), []
    first = "prismrag_seed_mentions" if substitute else "prismrag_seeds"

    def inputs():
        return _read(run, first).map_batches(dist.first_round, batch_format="pyarrow")

    for r in range(1, d.max_attempts + 1):
        gen, crit, rnd = f"prismrag_distractor_r{r}", f"prismrag_critique_r{r}", f"prismrag_distractor_round_r{r}"
        if substitute:
            kw = {"pool": pool, "max_facts": d.max_key_facts, "seed": cfg.seed + 100 * r}
            rule_stage(run, gen, [prev, "prismrag_entity_pool"], inputs,
                       lambda b, kw=kw: dist.substituted(b, **kw), extra_fp=(r, dist.SUBSTITUTE_ID, kw["seed"],
                                                                        d.max_key_facts))
        else:
            llm_stage(run, _reseeded(cfg, r), gen, [prev], inputs, "seed_id", "prismrag/distractor", gen,
                      check=dist.check_distractor, then=dist.generated, extra_fp=(r,))
        if d.critic == "rule":
            rule_stage(run, crit, [gen], lambda gen=gen: _read(run, gen), dist.rule_critiqued(d.pass_score),
                       extra_fp=(d.pass_score, dist.CRITIQUE_ID))
        else:
            llm_stage(run, cfg, crit, [gen], lambda gen=gen: _read(run, gen), "seed_id",
                      "prismrag/distractor_critique", crit, then=dist.critiqued(d.pass_score), extra_fp=(d.pass_score,))
        sources = [(crit, lambda b: dist.attempts(b, "critiqued"), None),
                   (f"rejects/{crit}", lambda b: dist.attempts(b, "critique_error"), None),
                   (f"rejects/{gen}", lambda b: dist.attempts(b, "generation_error"), None)]
        build_stage(run, rnd, [gen, crit], lambda s=sources: _gather(run, s, dist.ATTEMPT), rnd, schema=None)
        rounds.append(rnd)
        if not next_round_needed(r, d.max_attempts, _failing(run, rnd)):
            break
        prev = rnd

        def inputs(rnd=rnd):
            return run.read(rnd).map_batches(dist.next_round, batch_format="pyarrow")

    build_stage(run, "prismrag_distractor_select", rounds,
                lambda: _select(run, rounds, dist.select, seed=cfg.seed), "prismrag_distractor_examples",
                extra_fp=(cfg.seed,))
    return rounds


# ----------------------------------------------------------------------------- §4.3 strategization
def strategize_loop(run: Run, cfg: RunConfig) -> list[str]:
    """Generate → evaluate thought → evaluate answer → decide, one round per attempt."""
    s = cfg.prismrag.strategize
    prev, rounds = "prismrag_seed_qa", []

    def inputs():
        return _read(run, "prismrag_seeds").map_batches(
            st.first_round, batch_format="pyarrow", fn_kwargs={"mode": strategy_mode(1, s.stochastic_attempts)})

    for r in range(1, s.budget + 1):
        mode = strategy_mode(r, s.stochastic_attempts)
        gen, te, ae = f"prismrag_strategize_r{r}", f"prismrag_thought_eval_r{r}", f"prismrag_answer_eval_r{r}"
        rnd = f"prismrag_strategize_round_r{r}"
        prompt = "prismrag/strategize" if mode == "stochastic" else "prismrag/revise"
        llm_stage(run, _reseeded(cfg, r), gen, [prev], inputs, "seed_id", prompt, gen, then=st.generated,
                  check=st.check_attempt,
                  prepare=st.for_revision if mode == "revision" else None, extra_fp=(r, mode))

        def due(row, every=s.answer_eval_all):
            return st.answer_eval_due(row, s.pass_score, every)

        if s.evaluator == "rule":
            rule_stage(run, te, [gen], lambda gen=gen: _read(run, gen), st.rule_scored("thought"),
                       extra_fp=(st.RULE_IDS["thought"],))
            rule_stage(run, ae, [te], lambda te=te: _read(run, te).filter(due), st.rule_scored("answer"),
                       extra_fp=(s.pass_score, s.answer_eval_all, st.RULE_IDS["answer"]))
        else:
            llm_stage(run, cfg, te, [gen], lambda gen=gen: _read(run, gen), "seed_id", "prismrag/thought_eval", te,
                      then=st.scored("thought"))
            llm_stage(run, cfg, ae, [te], lambda te=te: _read(run, te).filter(due), "seed_id", "prismrag/answer_eval",
                      ae, then=st.scored("answer"), extra_fp=(s.pass_score, s.answer_eval_all))
        sources = [(ae, lambda b: st.attempts(b, "evaluated", s.pass_score), None),
                   (f"rejects/{ae}", lambda b: st.attempts(b, "answer_eval_error", s.pass_score), None),
                   (te, lambda b: st.attempts(b, "evaluated", s.pass_score), lambda row: not due(row)),
                   (f"rejects/{te}", lambda b: st.attempts(b, "thought_eval_error", s.pass_score), None),
                   (f"rejects/{gen}", lambda b: st.attempts(b, "generation_error", s.pass_score), None)]
        build_stage(run, rnd, [gen, te, ae], lambda src=sources: _gather(run, src, st.ATTEMPT), rnd, schema=None,
                    extra_fp=(s.pass_score,))
        rounds.append(rnd)
        if not next_round_needed(r, s.budget, _failing(run, rnd)):
            break
        prev = rnd

        def inputs(rnd=rnd, nxt=strategy_mode(r + 1, s.stochastic_attempts)):
            return run.read(rnd).map_batches(st.next_round, batch_format="pyarrow", fn_kwargs={"mode": nxt})

    build_stage(run, "prismrag_strategize_select", rounds, lambda: _select(run, rounds, st.select),
                "prismrag_strategize_examples")
    return rounds


# ----------------------------------------------------------------------------- examples, funnel, export
def assemble(run: Run, cfg: RunConfig, dist_rounds: list[str], strat_rounds: list[str]) -> None:
    p = cfg.prismrag
    parts = [t for t, on in (("prismrag_distractor_examples", bool(dist_rounds)),
                             ("prismrag_strategize_examples", bool(strat_rounds))) if on]
    upstream = ["prismrag_seed_qa"] + [{"prismrag_distractor_examples": "prismrag_distractor_select",
                                        "prismrag_strategize_examples": "prismrag_strategize_select"}[t] for t in parts]
    with run.stage("prismrag_examples", *_fp(run, *upstream), p.export.model_dump(), cfg.seed) as rec:
        if rec is None:
            return
        ds = [run.read(t) for t in parts if run.count(t)]
        if ds:
            data = (ds[0].union(*ds[1:]) if len(ds) > 1 else ds[0]).map_batches(_with_keep, batch_format="pyarrow")
        else:
            data = staging(EXAMPLES).empty_table()
        run.commit(rec, data, table="examples", schema=EXAMPLES)
        examples = run.read_arrow("examples").to_pylist()
        records = [sft.record(ex, p.export.system, cfg.prompt_search()) for ex in examples]
        records, mixed = sft.mix(records, p.export.distractor_share, cfg.seed)
        path = sft.write_sft(run.path("exports") / "sft_prismrag.jsonl", records)
        seeds = run.stage_record("prismrag_seed_qa")
        f = {"seeds": {"references": seeds["in"], "kept": seeds["out"], "rejected": seeds["rejected"]}}
        if dist_rounds:
            f["distractor"] = funnel.distractor_funnel(_attempts(run, dist_rounds, dist.ATTEMPT), p.distractor.max_attempts)
        if strat_rounds:
            f["strategize"] = funnel.strategize_funnel(_attempts(run, strat_rounds, st.ATTEMPT), p.strategize.budget)
        f["sft"] = {"path": str(path), "distractor": sum(r["task"] == "distractor" for r in records),
                    "strategize": sum(r["task"] == "strategize" for r in records), **mixed}
        rec.extra["funnel"] = f
        rec.extra["metrics"] = funnel.report_metrics(f)
    run.export_jsonl("examples", "examples.jsonl")


_FUNNEL_COLUMNS = ["seed_id", "attempt", "status", "passed", "mode", "relevance", "distraction", "format",
                   "thought_score", "answer_score"]


def _attempts(run: Run, tables: list[str], schema: pa.Schema) -> list[dict]:
    cols = [c for c in _FUNNEL_COLUMNS if c in schema.names]
    return [r for t in tables if run.count(t) for r in run.read_arrow(t, columns=cols).to_pylist()]


def _with_keep(b: pa.Table) -> pa.Table:
    for k in KEEP:
        if k in b.column_names:
            b = b.drop_columns([k])
        b = b.append_column(k, pa.nulls(b.num_rows, pa.string()))
    return b


# ----------------------------------------------------------------------------- the method
def prismrag(run: Run, cfg: RunConfig, *, limit: int | None) -> None:
    """The whole method: seeds, distractor loop, strategization loop, examples + SFT export."""
    cfg = cfg.model_copy(update={"prismrag": cfg.prismrag.resolved(cfg.llm.small)})
    p = cfg.prismrag
    seed_qa(run, cfg, limit)
    dist_rounds = distractor_loop(run, cfg) if p.distractor.enabled else []
    strat_rounds = strategize_loop(run, cfg) if p.strategize.enabled else []
    assemble(run, cfg, dist_rounds, strat_rounds)
