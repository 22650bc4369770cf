"""Query distillation (Tamber et al.): adapt a retriever to a domain with no human queries.

Read top to bottom like the paper's figure:

    chunks ──sample──▶ N passages
           ──generate─▶ six query types per passage (an LLM shown up to 3 examples of each type;
                        queries under 20 words)
           ──filter───▶ keep a query if its passage is in the retriever's top 20,
                        then only if the teacher ranks that passage first among those 20
           ──lists────▶ 20 candidates per query with teacher scores, min-max normalised on the
                        1st/99th percentiles (clipped to [0, 1]); candidates above 60% of the
                        positive's score flagged as likely false negatives
                        → RUN/retrieval_lists/, ready for `synthrag train retriever`
           ──train────▶ (querygen.train.enabled) the retriever on those lists → RUN/retriever/
           ──evaluate─▶ (querygen.evaluate.beir) base vs trained on held-out BEIR queries

The teacher runs on Ray Serve and is called through a DeploymentHandle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import yaml

from actors import llm_pool
from actors.llm import COST_COLUMNS
from actors.teacher import TeacherConfig
from pipelines.core.run import Run
from pipelines.core.schema import (
    REJECT_DETAIL,
    REJECT_REASON,
    RETRIEVAL_LISTS,
    stable_id,
    staging,
)
from pipelines.querygen.config import DEFAULT_EXAMPLES, QUERY_TYPES, QuerygenConfig
from pipelines.stages.citations import content_words
from pipelines.stages.index import index_run_chunks
from pipelines.stages.quality import seed_chunks
from pipelines.stages.stage import llm_stage


# ----------------------------------------------------------------------------- sample + generate
def load_examples(cfg: QuerygenConfig) -> dict[str, list[dict]]:
    """The few-shot passage-query pairs of each type in ``cfg.query_types`` (the paper gives up to 3 per
    type), from ``cfg.examples_file`` (default prompts/querygen/examples.yaml), checked here so a bad file
    fails before any LLM work: a type the method does not know, a requested type with no examples, or an
    example that is not a ``{passage, query}`` of non-empty text with the query under
    ``max_query_words`` words is a ``ValueError`` naming the file and the type. ``cfg.user_examples``,
    when given, replace the file's ``user_style`` examples (a bare query gets the passage "(a passage)")."""
    path = Path(cfg.examples_file) if cfg.examples_file else DEFAULT_EXAMPLES
    if not path.is_file():
        raise ValueError(f"querygen.examples_file: {path} is not a file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of query type -> list of {{passage, query}}")
    unknown = sorted(str(t) for t in data if t not in QUERY_TYPES)
    if unknown:
        raise ValueError(f"{path}: unknown query type(s) {unknown}; known: {QUERY_TYPES}")
    given = {}
    for t, exs in data.items():
        if exs is not None and not isinstance(exs, list):
            raise ValueError(f"{path}: examples for {t!r} must be a list of {{passage, query}}")
        given[t] = [_example(f"{path}: {t!r} example {i}", ex, cfg.max_query_words)
                    for i, ex in enumerate(exs or [], 1)]
    if cfg.user_examples:
        given["user_style"] = [_example(f"querygen.user_examples[{i}]",
                                        {"passage": "(a passage)", "query": ex} if isinstance(ex, str) else ex,
                                        cfg.max_query_words)
                               for i, ex in enumerate(cfg.user_examples)]
    out = {}
    for t in cfg.query_types:
        if not given.get(t):
            hint = " (or set querygen.user_examples)" if t == "user_style" else ""
            raise ValueError(f"{path}: query type {t!r} has no examples; give 1 to 3 passage-query pairs{hint}")
        out[t] = given[t]
    return out


def _example(where: str, ex, max_words: int) -> dict[str, str]:
    if not isinstance(ex, dict):
        raise ValueError(f"{where}: expected a mapping with `passage` and `query`, got {ex!r}")
    missing = [k for k in ("passage", "query") if k not in ex]
    if missing:
        raise ValueError(f"{where}: missing {' and '.join(f'`{k}`' for k in missing)}")
    extra = sorted(str(k) for k in ex if k not in ("passage", "query"))
    if extra:
        raise ValueError(f"{where}: unknown key(s) {extra}; an example has `passage` and `query`")
    for k in ("passage", "query"):
        if not isinstance(ex[k], str) or not ex[k].strip():
            raise ValueError(f"{where}: `{k}` must be non-empty text")
    n = len(ex["query"].split())
    if n >= max_words:
        raise ValueError(f"{where}: the query has {n} words; queries must be under {max_words} "
                         "(querygen.max_query_words)")
    return {"passage": ex["passage"].strip(), "query": ex["query"].strip()}


def _generation_rows(batch: pa.Table, types: list[str], examples: dict) -> pa.Table:
    rows = []
    for r in batch.select(["chunk_id", "text"]).to_pylist():
        for t in types:
            rows.append({"chunk_id": r["chunk_id"], "text": r["text"], "query_type": t,
                         "gen_key": f"{r['chunk_id']}|{t}", "examples": json.dumps(examples.get(t, []))})
    return pa.Table.from_pylist(rows)


def check_query(max_words: int):
    def check(row: dict, reply: dict) -> str | None:
        q = reply["query"].strip()
        words = q.split()
        if len(words) >= max_words:
            return f"too_long: {len(words)} words (must be under {max_words})"
        if len(words) >= 6 and q.lower() in row["text"].lower():
            return "copied_passage: the query is a verbatim span of the passage"
        if any(q.lower() == ex["query"].strip().lower() for ex in row.get("examples") or []):
            return "copied_example: the query repeats a few-shot example"
        if not content_words(q) & content_words(row["text"]):  # "...", the instructions echoed, an example's topic
            return f"query_off_topic: the query shares no content word with its passage: {q[:80]!r}"
        return None
    return check


def _queries(batch: pa.Table) -> pa.Table:
    out = []
    for r in batch.to_pylist():
        q = json.loads(r["llm_output"])["query"].strip() if r["llm_output"] else None
        out.append({"gen_key": r["gen_key"],
                    "query_id": stable_id("querygen", r["chunk_id"], r["query_type"], q or r["llm_raw"]),
                    "query": q, "query_type": r["query_type"], "positive": r["chunk_id"],
                    "prompt_id": r["prompt_id"], "model": r["model"], "seed": r["seed"],
                    REJECT_REASON: r["reject_reason"], REJECT_DETAIL: r["reject_detail"],
                    "attempts": r["attempts"], **{c: r[c] for c in COST_COLUMNS}})
    return pa.Table.from_pylist(out)


# ----------------------------------------------------------------------------- filter
FILTERED = staging(pa.schema([
    ("query_id", pa.string()), ("query", pa.string()), ("query_type", pa.string()), ("positive", pa.string()),
    ("candidates", pa.list_(pa.string())), ("raw_scores", pa.list_(pa.float32())),
    ("retriever_rank", pa.int32()), ("teacher_rank", pa.int32())]))


class ListBuilder:
    """Actor: retrieve the top-k for each query, apply both filter rules, score with the teacher."""

    def __init__(self, run_root: str, cfg: dict, handle):
        from actors.embedder import load_model
        from pipelines.stages.index import VectorIndex

        self.cfg = QuerygenConfig.model_validate(cfg)
        self.index = VectorIndex.load(Path(run_root) / "index")
        self.chunks = pads.dataset(Path(run_root) / "chunks", format="parquet")
        self.model = load_model(self.cfg.embedder.model, device=self.cfg.embedder.device)
        self.handle = handle

    def _texts(self, ids: set[str]) -> dict[str, str]:
        t = self.chunks.to_table(columns=["chunk_id", "title", "text"], filter=pads.field("chunk_id").isin(list(ids)))
        return {c: (f"{ti} {tx}" if ti else tx) for c, ti, tx in zip(*(t.column(i).to_pylist() for i in range(3)))}

    def __call__(self, batch: pa.Table) -> pa.Table:
        from actors.embedder import encode_texts
        from actors.teacher import score_many

        rows = batch.to_pylist()
        k = self.cfg.top_k
        vecs = encode_texts([r["query"] for r in rows], kind="query", settings=self.cfg.embedder, model=self.model)
        ids, _ = self.index.search(vecs, k)
        out, to_score = [], []
        for r, hits in zip(rows, ids):
            hits = [h for h in hits if h is not None]
            rec = {**{c: r[c] for c in ("query_id", "query", "query_type", "positive")}, "candidates": hits,
                   "raw_scores": None, "retriever_rank": None, "teacher_rank": None,
                   REJECT_REASON: None, REJECT_DETAIL: None}
            if r["positive"] not in hits:
                rec[REJECT_REASON] = "source_not_in_top20" if k == 20 else f"source_not_in_top{k}"
                rec[REJECT_DETAIL] = json.dumps({"top": hits[:5]})
            else:
                rec["retriever_rank"] = hits.index(r["positive"]) + 1
                to_score.append(rec)
            out.append(rec)
        if to_score:
            texts = self._texts({c for rec in to_score for c in rec["candidates"]})
            scores = score_many(self.handle, [rec["query"] for rec in to_score],
                                [[texts[c] for c in rec["candidates"]] for rec in to_score])
            for rec, s in zip(to_score, scores):
                rec["raw_scores"] = [float(x) for x in s]
                order = np.argsort(-np.asarray(s), kind="stable")
                rec["teacher_rank"] = int(np.where(order == rec["candidates"].index(rec["positive"]))[0][0]) + 1
                if rec["teacher_rank"] != 1:
                    rec[REJECT_REASON] = "teacher_prefers_other"
                    rec[REJECT_DETAIL] = json.dumps({"teacher_rank": rec["teacher_rank"],
                                                     "teacher_top": rec["candidates"][int(order[0])]})
        return pa.Table.from_pylist(out, schema=FILTERED)


# ----------------------------------------------------------------------------- lists
def normalise_scores(lists: list[list[float]], lo_pct: float, hi_pct: float) -> tuple[list[list[float]], float, float]:
    """Min-max over all queries' scores using the given percentiles as min and max, clipped."""
    flat = np.concatenate([np.asarray(s, dtype=np.float64) for s in lists]) if lists else np.zeros(0)
    if flat.size == 0:
        return [], 0.0, 1.0
    lo, hi = np.percentile(flat, [lo_pct, hi_pct])
    span = hi - lo if hi > lo else 1.0
    return [np.clip((np.asarray(s) - lo) / span, 0.0, 1.0).tolist() for s in lists], float(lo), float(hi)


def false_negatives(candidates: list[str], positive: str, scores: list[float], fraction: float) -> list[bool]:
    pos = scores[candidates.index(positive)]
    return [c != positive and s > fraction * pos for c, s in zip(candidates, scores)]


# ----------------------------------------------------------------------------- the pipeline
def querygen(run: Run, cfg, *, limit: int | None) -> None:
    """Generate → filter → lists. ``cfg`` is the RunConfig (uses ``llm`` and ``querygen``)."""
    import ray
    from ray import serve

    qg = cfg.querygen
    unknown = set(qg.query_types) - set(QUERY_TYPES)
    if unknown:
        raise ValueError(f"querygen.query_types: unknown {sorted(unknown)}; known: {QUERY_TYPES}")
    examples = load_examples(qg)

    def rows():  # sampled only when the stage runs, not when it is up to date
        wanted = set(seed_chunks(run, limit, qg.sample_seed))
        passages = run.read("chunks", columns=["chunk_id", "text"]).filter(lambda r: r["chunk_id"] in wanted)
        return passages.map_batches(_generation_rows, fn_kwargs={"types": qg.query_types, "examples": examples},
                                    batch_format="pyarrow")

    llm_stage(run, cfg, "querygen_generate", ["quality"], rows, "gen_key",
              {t: f"querygen/{t}" for t in qg.query_types}, "querygen_queries", prompt_key="query_type",
              check=check_query(qg.max_query_words), prepare=_parse_examples, then=_queries,
              extra_fp=(limit, qg.sample_seed, qg.query_types, examples, qg.max_query_words))

    index_run_chunks(run, qg.embedder, qg.index, actors=qg.embed_actors)

    with run.stage("querygen_filter", run.stage_record("querygen_generate")["fingerprint"],
                   run.stage_record("index")["fingerprint"], qg.top_k, qg.teacher.model_dump(mode="json")) as rec:
        if rec is not None:
            # generation is over: its warm servers' CPUs go to the teacher and the list builders
            # (on a 2-core box the server's 2 CPUs + the teacher's 2 left the builder unplaced)
            llm_pool.release()
            handle = _start_teacher(qg.teacher)
            try:
                ds = run.read("querygen_queries").map_batches(
                    ListBuilder, fn_constructor_kwargs={"run_root": str(run.root), "cfg": qg.model_dump(mode="json"),
                                                        "handle": handle},
                    batch_size=32, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
                run.commit(rec, ds, table="querygen_filtered")
            finally:
                serve.delete(qg.teacher.app_name)
            rec.extra["by_type"] = funnel_by_type(run)

    with run.stage("querygen_lists", run.stage_record("querygen_filter")["fingerprint"],
                   qg.percentiles, qg.false_negative_fraction) as rec:
        if rec is not None:
            kept = run.read_arrow("querygen_filtered").to_pylist()
            norm, lo, hi = normalise_scores([r["raw_scores"] for r in kept], *qg.percentiles)
            rows = []
            for r, s in zip(kept, norm):
                rows.append({"query_id": r["query_id"], "query": r["query"], "query_type": r["query_type"],
                             "positive": r["positive"], "candidates": r["candidates"], "teacher_scores": s,
                             "false_negative": false_negatives(r["candidates"], r["positive"], s,
                                                               qg.false_negative_fraction),
                             REJECT_REASON: None, REJECT_DETAIL: None})
            table = pa.Table.from_pylist(rows, schema=staging(RETRIEVAL_LISTS))
            run.commit(rec, table, table="retrieval_lists", schema=RETRIEVAL_LISTS)
            rec.extra["normalisation"] = {"p_lo": lo, "p_hi": hi, "percentiles": list(qg.percentiles)}
            flags = [f for r in rows for f in r["false_negative"]]
            rec.extra["false_negative_rate"] = round(sum(flags) / max(1, len(flags)), 4)

    if qg.train.enabled:
        train_stage(run, qg)
    if qg.evaluate.beir:
        eval_stage(run, qg)


def train_stage(run: Run, qg: QuerygenConfig) -> None:
    """Stage ``querygen_train``: `synthrag train retriever` on this run's lists → ``RUN/retriever/``.
    An interrupted training resumes from its last checkpoint; new lists or settings start afresh."""
    from training.retriever import RetrieverTrainConfig, train_retriever

    settings = qg.train.model_dump(exclude={"enabled"})
    out = run.path("retriever")
    with run.stage("querygen_train", run.stage_record("querygen_lists")["fingerprint"], settings) as rec:
        if rec is not None:
            if not rec.resumed:  # Ray Train resumes from RUN/retriever/ only for the same lists and settings
                shutil.rmtree(out, ignore_errors=True)
            rec.in_ = run.count("retrieval_lists")
            if rec.in_ == 0:
                raise ValueError("querygen.train: no retrieval lists survived the filters; nothing to train on "
                                 "(raise --limit, or see rejects/querygen_filter)")
            llm_pool.release()  # training needs the CPUs/GPUs the generation servers hold
            summary = train_retriever(RetrieverTrainConfig(data=run.root, out=out, **settings))
            rec.out = rec.in_  # every list is used (90% train, 10% dev); steps are in "training"
            rec.extra["training"] = {k: summary[k] for k in ("loss", "best_epoch", "best_dev_loss", "stopped_early",
                                                             "epochs_run", "steps")}


def eval_stage(run: Run, qg: QuerygenConfig) -> None:
    """Stage ``querygen_eval``: NDCG@10, Recall@100, MRR@10, P@3 of the base retriever and (when
    trained) of ``RUN/retriever/`` on a BEIR folder of held-out queries → ``RUN/eval_retrieval.json``."""
    from pipelines.eval.retrieval import evaluate_beir

    ev = qg.evaluate
    trained = run.stage_record("querygen_train") if qg.train.enabled else None
    models = {"base": qg.train.base} | ({"trained": str(run.path("retriever"))} if trained else {})
    with run.stage("querygen_eval", str(ev.beir.resolve()), ev.split, qg.embedder.model_dump(), models,
                   trained and trained["fingerprint"]) as rec:
        if rec is not None:
            results = {}
            for name, model in models.items():
                metrics, _ = evaluate_beir(ev.beir, split=ev.split, settings=qg.embedder.model_copy(update={"model": model}))
                results[name] = {k: round(v, 4) for k, v in metrics.items()}
                print(f"[synthrag] querygen_eval {name}: {json.dumps(results[name])}", flush=True)
            rec.in_ = rec.out = int(results["base"].get("num_queries", 0))
            rec.extra["metrics"] = results
            (run.path("eval_retrieval.json")).write_text(json.dumps(
                {"beir": str(ev.beir), "split": ev.split, "models": models, "metrics": results}, indent=2))


def _parse_examples(batch: pa.Table) -> pa.Table:
    """Rows carry examples as JSON text (Arrow-friendly); the prompt wants a list."""
    rows = batch.to_pylist()
    for r in rows:
        r["examples"] = json.loads(r["examples"])
    return pa.Table.from_pylist(rows)


def _start_teacher(tcfg: TeacherConfig):
    from actors.teacher import start_teacher

    return start_teacher(tcfg)


def funnel_by_type(run: Run) -> dict[str, dict]:
    """Per query type: generated, dropped by each rule, kept (for the manifest)."""
    out: dict[str, dict] = {}

    def add(table_dir: Path, col_reason: bool):
        if not table_dir.is_dir() or not any(table_dir.glob("*.parquet")):
            return
        cols = ["query_type", REJECT_REASON] if col_reason else ["query_type"]
        t = pads.dataset(table_dir, format="parquet").to_table(columns=cols).to_pylist()
        for r in t:
            d = out.setdefault(r["query_type"], {"kept": 0, "dropped": {}})
            if col_reason:
                d["dropped"][r[REJECT_REASON]] = d["dropped"].get(r[REJECT_REASON], 0) + 1
            else:
                d["kept"] += 1

    add(run.path("rejects") / "querygen_generate", True)
    add(run.path("rejects") / "querygen_filter", True)
    add(run.path("querygen_filtered"), False)
    for d in out.values():
        d["generated"] = d["kept"] + sum(d["dropped"].values())
    return out
