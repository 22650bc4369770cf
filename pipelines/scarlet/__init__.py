"""SCARLet (Xu et al., 2025): retriever data labelled by what actually helps a generator.

Read top to bottom like the paper's Figure 1; every arrow is a stage with its funnel in the
manifest and its dropped rows in ``rejects/<stage>/``:

    seeds (--seeds FILE, or one seed per passage from the corpus) ──spaCy──▶ seed entities (§3.3)
          ──KG one-hop (corpus co-mention graph, or SPARQL)──▶ expanded entity lists
          ──dense top-10 per entity, top-10 overall──▶ shared contexts
          ──synthesise each task of the pool (T = 0.5)──▶ ──judge YES/NO──▶ synthetic examples
          ──+ noise passages (relevant but useless)──▶ contexts of k passages
          ──64 keep-masks × teacher-forced Σ logit(y_t), ridge (§3.4)──▶ utilities α_j
          ──1-D 3-means (§3.5)──▶ positives / dropped / negatives
          ──▶ retrieval_lists/ (labels), exports/scarlet_lists.jsonl, exports/scarlet_pairs.jsonl
          ──▶ `synthrag train retriever --loss pairwise` (Eq. 6)

The pieces live beside this file: ``tasks`` (pool and seeds), ``kg`` (graphs), ``attribution``
(masks, ridge), ``split`` (clustering); the settings in ``config``.

Fidelity to the paper (each step, what we do, where we differ and why): docs/FIDELITY.md#scarlet.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

import prompts as prompt_files
from actors.llm import COST_COLUMNS, ROW_SCHEMA
from pipelines.core.run import Run
from pipelines.core.schema import (
    REJECT_DETAIL,
    REJECT_REASON,
    RETRIEVAL_LISTS,
    stable_id,
    staging,
)
from pipelines.scarlet import attribution as attr
from pipelines.scarlet.split import DegenerateUtilities, split_utilities
from pipelines.scarlet.tasks import Task, load_pool, read_seeds
from pipelines.stages.citations import ABOUT_THE_EXERCISE
from pipelines.stages.index import index_run_chunks
from pipelines.stages.quality import seed_chunks
from pipelines.stages.stage import build_stage, llm_stage, ray_from_arrow

if TYPE_CHECKING:
    from pipelines.registry import RunConfig

LINEAGE = ("prompt_id", "model", "seed", "attempts", *COST_COLUMNS)


def _rows(run: Run, table: str) -> list[dict]:
    return run.read_arrow(table).to_pylist() if run.count(table) else []


def _reply(r: dict) -> dict | None:
    return json.loads(r["llm_output"]) if r.get("llm_output") else None


def _qa_rows(batch: pa.Table, keys: tuple[str, ...], tasks: dict[str, Task]) -> pa.Table:
    """An LLM stage's ``{input, answer}`` replies as rows: the ``keys`` columns carried over, the
    answer in its task's form, lineage, and the reject columns (null input/answer when rejected)."""
    out = []
    for r in batch.to_pylist():
        rep = _reply(r)
        out.append({**{k: r[k] for k in keys}, "input": rep["input"].strip() if rep else None,
                    "answer": tasks[r["task"]].normalise_answer(rep["answer"]) if rep else None,
                    **{k: r[k] for k in LINEAGE}, REJECT_REASON: r[REJECT_REASON], REJECT_DETAIL: r[REJECT_DETAIL]})
    return pa.Table.from_pylist(out)


def _table(rows: list[dict]) -> pa.Table:
    """Rows (kept and rejected) as a table; every row carries both reject columns."""
    for r in rows:
        r.setdefault(REJECT_REASON, None)
        r.setdefault(REJECT_DETAIL, None)
    return pa.Table.from_pylist(rows) if rows else pa.table({REJECT_REASON: pa.array([], pa.string()),
                                                             REJECT_DETAIL: pa.array([], pa.string())})


_INSTRUCTION_LINES = ("the new example must be correct", "write one new example", "write a new example")


def repetitive(text: str, n: int = 4, times: int = 3) -> bool:
    """Some run of ``n`` words occurs ``times`` or more: the small model's loop, not an answer."""
    words = re.findall(r"\w+", text.lower())
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return bool(grams) and max(grams.values()) >= times


def check_example(task: Task, row: dict, reply: dict, source: str) -> str | None:
    """The cheap checks a synthetic (or seed) example must pass before anything else sees it:
    the task's answer format, no loop, not the prompt's instructions or example copied, the
    input about the exercise ("What is the answer to the question?"), no verdict in a labelled
    task's input ("True, refutes the statement."), the task's input form
    (``input_pattern``, e.g. a question ends with "?") and, for free-text answers,
    grounded: most of the answer's content words occur in the passages it was written from."""
    if task.normalise_answer(reply["answer"]) is None:
        return f"bad_answer_format: {reply['answer'][:60]!r} is not a {task.name} answer"
    inp, ans = reply["input"].strip().lower(), reply["answer"].strip().lower()
    if repetitive(inp) or repetitive(ans):
        return "repetitive: the reply repeats one phrase over and over"
    if any(line.strip() and line.strip() in inp for line in _INSTRUCTION_LINES):
        return "copied_instruction: the input repeats the prompt's instructions"
    if inp == task.example.input.strip().lower() or (not task.answer_choices and ans == task.example.answer.strip().lower()):
        return "copied_example: the example repeats the task's example"
    if task.answer_choices and re.search(r"\b(true|false|%s)\b" % "|".join(re.escape(c.lower()) for c in task.answer_choices), inp):
        return f"label_in_input: the input names a verdict instead of stating a claim: {reply['input'][:60]!r}"
    if ABOUT_THE_EXERCISE.search(inp):
        return f"generic_input: it is about the exercise, not the passages: {reply['input'][:60]!r}"
    if task.input_pattern and not re.search(task.input_pattern, reply["input"].strip()):
        return f"bad_input_format: {reply['input'][:60]!r} does not match {task.name}'s input_pattern"
    if not task.answer_choices:
        words = [w for w in re.findall(r"[a-z0-9]+", ans) if len(w) > 3]
        text = source.lower()
        if words and sum(w in text for w in words) < 0.5 * len(words):
            return "answer_not_grounded: most of the answer's words are not in the passages"
    return None


def task_schemas(cfg: RunConfig, prompt: str, tasks) -> dict[str, str]:
    """Per task, the reply schema its rows of ``prompt`` are decoded under (the row's
    ``llm_schema``): the file's, narrowed to the task's labels and, for the small model, its
    input grammar (see :meth:`Task.reply_schema`)."""
    base = prompt_files.load(prompt, search=cfg.prompt_search(), variant=cfg.llm.variant).schema
    return {t.name: json.dumps(t.reply_schema(base, grammar=cfg.llm.small)) for t in tasks}


def render_context(passages: list[dict]) -> str:
    return "\n".join(f"[{i + 1}] {p['text']}" for i, p in enumerate(passages))


# ----------------------------------------------------------------------------- seeds
def seeds(run: Run, cfg: RunConfig, pool: dict[str, Task], limit: int | None) -> None:
    sc = cfg.scarlet
    if sc.seeds_file:
        def build():
            rows = read_seeds(sc.seeds_file, pool)
            kept = [r for r in rows if r[REJECT_REASON] is None]
            for r in kept[limit:] if limit else []:
                r[REJECT_REASON], r[REJECT_DETAIL] = "over_limit", json.dumps({"limit": limit})
            return _table(rows)
        build_stage(run, "scarlet_seeds", ["dedupe"], build, "scarlet_seeds", schema=None,
                    extra_fp=(str(sc.seeds_file), limit, sorted(pool)))
        return

    names = list(pool)
    per_chunk = names if sc.seed_tasks == "all" else None if sc.seed_tasks == "rotate" else list(sc.seed_tasks)

    schemas = task_schemas(cfg, "scarlet/seed", pool.values())

    def rows():
        order = {c: i for i, c in enumerate(seed_chunks(run, limit, cfg.seed))}
        t = run.read_arrow("chunks", columns=["chunk_id", "text"]).to_pylist()
        t = sorted((r for r in t if r["chunk_id"] in order), key=lambda r: order[r["chunk_id"]])
        out = []
        for i, r in enumerate(t):
            for name in per_chunk or [names[i % len(names)]]:
                out.append({"seed_id": f"{r['chunk_id']}|{name}", "chunk_id": r["chunk_id"], "text": r["text"],
                            "source": f"corpus:{r['chunk_id']}", **pool[name].prompt_fields(),
                            ROW_SCHEMA: schemas[name]})
        return ray_from_arrow(pa.Table.from_pylist(out))

    def check(row, reply):
        return check_example(pool[row["task"]], row, reply, row["text"])

    def then(batch: pa.Table) -> pa.Table:
        return _qa_rows(batch, ("seed_id", "task", "chunk_id", "source"), pool)

    llm_stage(run, cfg, "scarlet_seeds", ["quality"], rows, "seed_id", "scarlet/seed", "scarlet_seeds",
              check=check, then=then, extra_fp=(limit, cfg.seed, sc.seed_tasks, [t.model_dump() for t in pool.values()], schemas, sc.tasks_file))


# ----------------------------------------------------------------------------- entities
def seed_entities(run: Run, cfg: RunConfig) -> None:
    """spaCy entities of each seed's input + answer (App. A); a seed with none is ``no_entity``."""
    from actors.ner import load_ner
    from pipelines.stages.entities import coarse_label, normalise_name

    def build():
        nlp, rows = load_ner(), _rows(run, "scarlet_seeds")
        texts = [f"{r['input']}\n{r['answer']}" for r in rows]
        for r, doc in zip(rows, nlp.pipe(texts, batch_size=64)):
            seen, ents = set(), []
            for e in doc.ents:
                key = normalise_name(e.text)
                if coarse_label(e.label_) and key and key not in seen:
                    seen.add(key)
                    ents.append(e.text.strip())
            fallback = not ents and cfg.scarlet.no_entity == "use_input"
            r["entities"] = [r["input"]] if fallback else ents
            r["entity_fallback"] = fallback
            r[REJECT_REASON] = None if r["entities"] else "no_entity"
            r[REJECT_DETAIL] = None if r["entities"] else json.dumps({"text": r["input"][:200]})
        return _table(rows)

    build_stage(run, "scarlet_entities", ["scarlet_seeds"], build, "scarlet_entities", schema=None,
                extra_fp=(cfg.scarlet.no_entity,))


def corpus_mentions(run: Run, cfg: RunConfig) -> None:
    """NER over every chunk: the corpus's own entity graph (co-mentions) for the expansion."""
    import ray

    from actors.ner import NER

    def build():
        ds = run.read("chunks", columns=["chunk_id", "text"])
        ds = ds.map_batches(NER, batch_size=256, batch_format="pyarrow", num_cpus=1,
                            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2))
        return ds.map_batches(lambda b: b.drop_columns(["text"]).append_column(
            REJECT_REASON, pa.nulls(b.num_rows, pa.string())).append_column(
            REJECT_DETAIL, pa.nulls(b.num_rows, pa.string())), batch_format="pyarrow")

    build_stage(run, "scarlet_corpus_ner", ["dedupe"], build, "scarlet_mentions", schema=None)


def _graph(run: Run, cfg: RunConfig):
    from pipelines.scarlet.kg import CorpusGraph, SparqlKG

    kg = cfg.scarlet.kg
    if kg.kind == "sparql":
        if not kg.sparql_url:
            raise ValueError("scarlet.kg.kind 'sparql' needs scarlet.kg.sparql_url (or --sparql-url)")
        return SparqlKG(kg.sparql_url, cache_path=run.path("kg_cache.json"), timeout_s=kg.timeout_s,
                        limit=kg.neighbours, direct_claims=kg.direct_claims)
    return CorpusGraph.from_ner_rows(_rows(run, "scarlet_mentions"), limit=kg.neighbours, max_degree=kg.max_degree)


def expand_row(r: dict, graph, max_entities: int, require_known: bool) -> dict:
    """A seed with its entities' one-hop neighbours (``entity_list``: its own entities first,
    then new neighbours, at most ``max_entities``). A graph that could not be asked (timeout,
    HTTP error, bad reply) makes the seed a reject with that reason; so does a graph that knows
    none of its entities, when ``require_known``."""
    known, added, errors, relations = 0, [], [], []
    if r.get("entity_fallback"):  # its input stands in for entities: retrieved with, not expanded
        return dict(r, neighbours=[], entity_list=list(r["entities"]), relations="[]", known_entities=0)
    for e in r["entities"]:
        look = graph.neighbours(e)
        if look.error:
            errors.append(f"{e}: {look.error}")
            continue
        known += look.item is not None
        added += [n for n in look.names if n not in r["entities"] and n not in added]
        relations += [[e, rel, n] for rel, n in look.relations]
    r = dict(r, neighbours=added, entity_list=(r["entities"] + added)[:max_entities],
             relations=json.dumps(relations[:50], ensure_ascii=False), known_entities=known)
    if errors:
        r[REJECT_REASON] = errors[0].split(": ", 1)[1].split(":")[0]
        r[REJECT_DETAIL] = json.dumps({"errors": errors})
    elif known == 0 and require_known:
        r[REJECT_REASON] = "entity_not_in_graph"
        r[REJECT_DETAIL] = json.dumps({"entities": r["entities"]})
    return r


def expand(run: Run, cfg: RunConfig) -> None:
    """One-hop neighbours of every seed entity (§3.3, App. A); the seed's own entities first."""
    kg = cfg.scarlet.kg
    upstream = ["scarlet_entities"] + (["scarlet_corpus_ner"] if kg.kind == "corpus" else [])

    def build():
        graph = _graph(run, cfg)
        rows = [expand_row(r, graph, cfg.scarlet.max_entities, kg.require_known_entity)
                for r in _rows(run, "scarlet_entities")]
        if hasattr(graph, "save"):
            graph.save()
        return _table(rows)

    build_stage(run, "scarlet_expand", upstream, build, "scarlet_expanded", schema=None,
                extra_fp=(kg.model_dump(), cfg.scarlet.max_entities))


# ----------------------------------------------------------------------------- shared contexts
def contexts(run: Run, cfg: RunConfig) -> None:
    """Top ``per_entity`` passages per entity, then the ``context_size`` best across the seed's
    entities (a chunk's score is its best over them); seeds with the same passage set share one
    context."""
    sc = cfg.scarlet

    def build():
        from actors.embedder import encode_texts, load_model
        from pipelines.stages.index import VectorIndex

        rows = _rows(run, "scarlet_expanded")
        index = VectorIndex.load(run.path("index"))
        model = load_model(sc.embedder.model, device=sc.embedder.device)
        out, by_set = [], {}
        for r in rows:
            vecs = encode_texts(r["entity_list"], kind="query", settings=sc.embedder, model=model)
            ids, scores = index.search(vecs, sc.per_entity)
            best: dict[str, float] = {}
            for row_ids, row_scores in zip(ids, scores):
                for c, s in zip(row_ids, row_scores):
                    if c is not None and s > best.get(c, -np.inf):
                        best[c] = float(s)
            top = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:sc.context_size]
            if len(top) < 2:
                out.append({"context_id": stable_id("scarlet-context", r["seed_id"]), "seed_ids": [r["seed_id"]],
                            "entities": r["entity_list"], "chunk_ids": [c for c, _ in top],
                            "scores": [s for _, s in top], REJECT_REASON: "context_too_small",
                            REJECT_DETAIL: json.dumps({"passages": len(top)})})
                continue
            key = tuple(sorted(c for c, _ in top))
            if key in by_set:
                by_set[key]["seed_ids"].append(r["seed_id"])
                continue
            by_set[key] = {"context_id": stable_id("scarlet-context", *key), "seed_ids": [r["seed_id"]],
                           "entities": r["entity_list"], "chunk_ids": [c for c, _ in top],
                           "scores": [s for _, s in top]}
            out.append(by_set[key])
        return _table(out)

    build_stage(run, "scarlet_context", ["scarlet_expand", "index"], build, "scarlet_contexts", schema=None,
                extra_fp=(sc.per_entity, sc.context_size, sc.embedder.model_dump()))


def _chunk_texts(run: Run, ids: set[str]) -> dict[str, str]:
    import pyarrow.dataset as pads

    if not ids:
        return {}
    t = pads.dataset(run.path("chunks"), format="parquet").to_table(
        columns=["chunk_id", "title", "text"], filter=pads.field("chunk_id").isin(pa.array(sorted(ids), pa.string())))
    return {c: (f"{ti}: {tx}" if ti else tx) for c, ti, tx in zip(*(t.column(i).to_pylist() for i in range(3)))}


def _context_passages(run: Run, ctxs: list[dict], max_words: int) -> dict[str, list[dict]]:
    texts = _chunk_texts(run, {c for x in ctxs for c in x["chunk_ids"]})
    out = {}
    for x in ctxs:
        out[x["context_id"]] = [{"id": c, "text": attr.truncate_words(texts[c], max_words)[0], "noise": False}
                                for c in x["chunk_ids"] if c in texts]
    return out


# ----------------------------------------------------------------------------- synthesis + filter
def synthesize(run: Run, cfg: RunConfig, tasks: list[Task]) -> None:
    sc = cfg.scarlet
    by_name = {t.name: t for t in tasks}

    schemas = task_schemas(cfg, "scarlet/synthesize", tasks)

    def rows():
        ctxs = _rows(run, "scarlet_contexts")
        passages = _context_passages(run, ctxs, sc.max_passage_words)
        out = [{"example_id": stable_id("scarlet", x["context_id"], t.name), "context_id": x["context_id"],
                "context": render_context(passages[x["context_id"]]), **t.prompt_fields(),
                ROW_SCHEMA: schemas[t.name]}
               for x in ctxs for t in tasks]
        return ray_from_arrow(pa.Table.from_pylist(out))

    def check(row, reply):
        return check_example(by_name[row["task"]], row, reply, row["context"])

    def then(batch: pa.Table) -> pa.Table:
        return _qa_rows(batch, ("example_id", "context_id", "task"), by_name)

    llm_stage(run, cfg, "scarlet_synthesize", ["scarlet_context"], rows, "example_id", "scarlet/synthesize",
              "scarlet_synthetic", check=check, then=then,
              extra_fp=(sc.max_passage_words, [t.model_dump() for t in tasks], schemas))


def judge(run: Run, cfg: RunConfig, pool: dict[str, Task]) -> None:
    sc = cfg.scarlet

    def rows():
        exs = _rows(run, "scarlet_synthetic")
        ctxs = {x["context_id"]: x for x in _rows(run, "scarlet_contexts")}
        passages = _context_passages(run, list(ctxs.values()), sc.max_passage_words)
        out = [{**e, "context": render_context(passages[e["context_id"]]),
                **{k: v for k, v in pool[e["task"]].prompt_fields().items() if k != "task"}} for e in exs]
        for r in out:
            for k in (*LINEAGE, REJECT_REASON, REJECT_DETAIL):
                r.pop(k, None)
        return ray_from_arrow(pa.Table.from_pylist(out))

    def check(row, reply):
        if reply["verdict"] != "YES":
            return f"judge_rejected: {reply['reason'][:200]}"
        return None

    def then(batch: pa.Table) -> pa.Table:
        keep = ["example_id", "context_id", "task", "input", "answer", *LINEAGE, REJECT_REASON, REJECT_DETAIL]
        t = batch.select(keep)
        reasons = [(_reply(r) or {}).get("reason") for r in batch.select(["llm_output"]).to_pylist()]
        return t.append_column("judge_reason", pa.array(reasons, pa.string()))

    llm_stage(run, cfg, "scarlet_filter", ["scarlet_synthesize"], rows, "example_id", "scarlet/judge",
              "scarlet_filtered", check=check, then=then)


def noise(run: Run, cfg: RunConfig) -> None:
    """``noise_passages`` synthetic passages per shared context that still has examples (App. A)."""
    sc = cfg.scarlet

    def rows():
        used = {e["context_id"] for e in _rows(run, "scarlet_filtered")}
        ctxs = [x for x in _rows(run, "scarlet_contexts") if x["context_id"] in used]
        passages = _context_passages(run, ctxs, sc.max_passage_words)
        out = [{"noise_id": f"noise:{x['context_id']}:{j}", "context_id": x["context_id"],
                "context": render_context(passages[x["context_id"]][:3]), "topic": ", ".join(x["entities"][:4])}
               for x in ctxs for j in range(sc.noise_passages)]
        return ray_from_arrow(pa.Table.from_pylist(out) if out else pa.table({"noise_id": pa.array([], pa.string())}))

    def check(row, reply):
        p = reply["passage"].strip()
        if p[:80] and p[:80] in row["context"]:
            return "copied_passage: the noise repeats a context passage"
        return None

    def then(batch: pa.Table) -> pa.Table:
        out = [{"noise_id": r["noise_id"], "context_id": r["context_id"],
                "text": (_reply(r) or {}).get("passage"), **{k: r[k] for k in LINEAGE},
                REJECT_REASON: r[REJECT_REASON], REJECT_DETAIL: r[REJECT_DETAIL]} for r in batch.to_pylist()]
        return pa.Table.from_pylist(out)

    llm_stage(run, cfg, "scarlet_noise", ["scarlet_filter"], rows, "noise_id", "scarlet/noise", "scarlet_noise",
              check=check, then=then, extra_fp=(sc.noise_passages,))


# ----------------------------------------------------------------------------- utility attribution
def example_passages(ctx_passages: list[dict], noise_rows: list[dict], example_id: str, seed: int) -> list[dict]:
    """The k passages an example is attributed over: its shared context in retrieval order with
    each noise passage at a seeded position."""
    rng = np.random.default_rng(int(stable_id("noise-position", example_id, seed)[:8], 16))
    out = list(ctx_passages)
    for nz in noise_rows:
        out.insert(int(rng.integers(0, len(out) + 1)), {"id": nz["noise_id"], "text": nz["text"], "noise": True})
    return out


def attribute(run: Run, cfg: RunConfig, pool: dict[str, Task]) -> None:
    sc = cfg.scarlet

    def prepared() -> list[dict]:
        exs = _rows(run, "scarlet_filtered")
        ctxs = {x["context_id"]: x for x in _rows(run, "scarlet_contexts")}
        noise_by = {}
        for nz in _rows(run, "scarlet_noise"):
            noise_by.setdefault(nz["context_id"], []).append(nz)
        passages = _context_passages(run, [ctxs[c] for c in {e["context_id"] for e in exs}], 10 ** 6)
        out = []
        for e in exs:
            ps = example_passages(passages[e["context_id"]], noise_by.get(e["context_id"], []), e["example_id"], cfg.seed)
            budget = attr.passage_budget(len(ps), len(e["input"].split()), len(e["answer"].split()),
                                         cfg.llm.max_input_tokens, sc.max_passage_words)
            cut = [attr.truncate_words(p["text"], budget) for p in ps]
            out.append({**e, "passages": [{**p, "text": t} for p, (t, _) in zip(ps, cut)],
                        "passage_words": budget, "truncated_passages": sum(c for _, c in cut)})
        return out

    def rows():
        out = []
        for e in prepared():
            masks = attr.sample_masks(len(e["passages"]), sc.masks, sc.keep_probability,
                                      seed=int(stable_id("masks", e["example_id"], cfg.seed)[:8], 16))
            for m, mask in enumerate(masks):
                kept = [p for p, keep in zip(e["passages"], mask) if keep]
                out.append({"attr_key": f"{e['example_id']}|{m}", "example_id": e["example_id"], "mask_index": m,
                            "mask": mask.tolist(), "input": e["input"], "answer": e["answer"],
                            "task_instruction": pool[e["task"]].instruction, "passages": render_context(kept)})
        return ray_from_arrow(pa.Table.from_pylist(out) if out else pa.table({"attr_key": pa.array([], pa.string())}))

    def check(row, reply):
        if reply["tokens"][0] == 0:
            return "empty_answer: the answer tokenises to zero tokens"
        return None

    def then(batch: pa.Table) -> pa.Table:
        keep = ["attr_key", "example_id", "mask_index", "mask", "llm_output", *LINEAGE, REJECT_REASON, REJECT_DETAIL]
        return batch.select(keep)

    # one actor call scores a whole example's masks (they share its instruction-and-input prefix)
    scoring = cfg.model_copy(update={"llm": cfg.llm.model_copy(update={
        "batch_size": sc.masks, "logprobs_mode": "raw_logits" if sc.target == "logit" else "raw_logprobs"})})
    llm_stage(run, scoring, "scarlet_attribution", ["scarlet_filter", "scarlet_noise"], rows, "attr_key",
              "scarlet/answer", "scarlet_mask_scores", check=check, then=then,
              extra_fp=(sc.masks, sc.keep_probability, sc.max_passage_words, cfg.seed))

    def build():
        scores: dict[str, list[tuple[list[bool], dict]]] = {}
        for r in _rows(run, "scarlet_mask_scores"):
            scores.setdefault(r["example_id"], []).append((r["mask"], json.loads(r["llm_output"])))
        out = []
        for e in prepared():
            got = scores.get(e["example_id"], [])
            ps = e["passages"]
            row = {"example_id": e["example_id"], "context_id": e["context_id"], "task": e["task"],
                   "input": e["input"], "answer": e["answer"], "passage_ids": [p["id"] for p in ps],
                   "passage_texts": [p["text"] for p in ps], "is_noise": [p["noise"] for p in ps],
                   "passage_words": e["passage_words"], "truncated_passages": e["truncated_passages"],
                   "masks_scored": len(got)}
            if len(got) < len(ps) + 1:
                out.append(row | {REJECT_REASON: "too_few_masks", REJECT_DETAIL: json.dumps(
                    {"scored": len(got), "passages": len(ps), "see": "rejects/scarlet_attribution"})})
                continue
            z = [attr.target_value(s, sc.target) for _, s in got]
            intercept, alpha = attr.fit_ridge(np.array([m for m, _ in got]), z, sc.ridge_lambda)
            row |= {"utilities": alpha.tolist(), "intercept": intercept, "z_mean": float(np.mean(z))}
            try:
                s = split_utilities(alpha, sc.split)
            except DegenerateUtilities as err:
                out.append(row | {REJECT_REASON: "degenerate_utilities", REJECT_DETAIL: json.dumps({"error": str(err)})})
                continue
            row |= {"positives": s.positives, "negatives": s.negatives, "dropped": s.middle}
            if all(ps[i]["noise"] for i in s.positives):
                row |= {REJECT_REASON: "no_chunk_positive", REJECT_DETAIL: json.dumps({"positives": s.positives})}
            out.append(row)
        return _table(out)

    build_stage(run, "scarlet_utilities", ["scarlet_attribution"], build, "scarlet_utilities", schema=None,
                extra_fp=(sc.target, sc.ridge_lambda, sc.split))


# ----------------------------------------------------------------------------- lists + exports
def lists(run: Run, cfg: RunConfig, pool: dict[str, Task]) -> None:
    sc = cfg.scarlet

    def query(u: dict) -> str:
        return f"{pool[u['task']].retrieval_instruction} {u['input']}" if sc.query_with_instruction else u["input"]

    with run.stage("scarlet_lists", run.stage_record("scarlet_utilities")["fingerprint"],
                   sc.query_with_instruction) as rec:
        if rec is None:
            return
        utils = _rows(run, "scarlet_utilities")
        rows, inline, pairs = [], [], []
        for u in utils:
            pos = [i for i in u["positives"] if not u["is_noise"][i]]
            neg_chunks = [i for i in u["negatives"] if not u["is_noise"][i]]
            order = pos + neg_chunks
            row = {"query_id": u["example_id"], "query": query(u), "query_type": u["task"],
                   "positive": u["passage_ids"][pos[0]], "candidates": [u["passage_ids"][i] for i in order],
                   "teacher_scores": None, "false_negative": None,
                   "labels": [1.0] * len(pos) + [0.0] * len(neg_chunks), REJECT_REASON: None, REJECT_DETAIL: None}
            if not neg_chunks:
                row |= {REJECT_REASON: "no_chunk_negative", REJECT_DETAIL: json.dumps({"negatives": u["negatives"]})}
            rows.append(row)
            texts = u["passage_texts"]
            allneg = u["negatives"]
            inline.append({"query_id": u["example_id"], "query": query(u), "positive": texts[pos[0]],
                           "candidates": [texts[i] for i in pos + allneg],
                           "labels": [1.0] * len(pos) + [0.0] * len(allneg)})
            pairs.append({"query": query(u), "task": u["task"], "pos": [texts[i] for i in pos],
                          "neg": [texts[i] for i in allneg],
                          "utilities": {"pos": [u["utilities"][i] for i in pos],
                                        "neg": [u["utilities"][i] for i in allneg]}})
        table = pa.Table.from_pylist(rows, schema=staging(RETRIEVAL_LISTS)) if rows else \
            staging(RETRIEVAL_LISTS).empty_table()
        run.commit(rec, table, table="retrieval_lists", schema=RETRIEVAL_LISTS)
        exports = run.path("exports")
        exports.mkdir(exist_ok=True)
        for name, data in (("scarlet_lists.jsonl", inline), ("scarlet_pairs.jsonl", pairs)):
            with (exports / name).open("w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in data)
        rec.extra["exports"] = {"scarlet_lists.jsonl": len(inline), "scarlet_pairs.jsonl": len(pairs)}
        rec.extra["funnel"] = funnel(run, utils)


def funnel(run: Run, utils: list[dict]) -> dict:
    """The paper's Table 12 for this run."""
    st = {s["name"]: s for s in run.manifest["stages"]}

    def stage(name, key):
        return (st.get(name) or {}).get(key, 0)

    ents = _rows(run, "scarlet_entities")
    exp = _rows(run, "scarlet_expanded")
    seeds_in = stage("scarlet_seeds", "in")
    synth = Counter(r["task"] for r in _rows(run, "scarlet_synthetic"))
    f_in, f_out = stage("scarlet_filter", "in"), stage("scarlet_filter", "out")
    pos = [len(u["positives"]) for u in utils]
    neg = [len(u["negatives"]) for u in utils]
    return {
        "seeds": seeds_in,
        "valid_seeds": stage("scarlet_entities", "in"),
        "entity_loss_rate": round(1 - stage("scarlet_entities", "out") / stage("scarlet_entities", "in"), 4)
        if stage("scarlet_entities", "in") else 0.0,
        "expansion_rate": round(sum(bool(r["neighbours"]) for r in exp) / len(exp), 4) if exp else 0.0,
        "entities_per_seed": round(float(np.mean([len(r["entity_list"]) for r in exp])), 2) if exp else 0.0,
        "seed_entities_per_seed": round(float(np.mean([len(r["entities"]) for r in ents])), 2) if ents else 0.0,
        "entity_fallbacks": sum(bool(r.get("entity_fallback")) for r in ents),
        "shared_contexts": stage("scarlet_context", "out"),
        "synthesised_per_task": dict(sorted(synth.items())),
        "filter_loss_rate": round(1 - f_out / f_in, 4) if f_in else 0.0,
        "usable_splits": len(utils),
        "positives_per_example": round(float(np.mean(pos)), 2) if pos else 0.0,
        "negatives_per_example": round(float(np.mean(neg)), 2) if neg else 0.0,
    }


# ----------------------------------------------------------------------------- the method
def scarlet(run: Run, cfg: RunConfig, *, limit: int | None) -> None:
    sc = cfg.scarlet
    if run.count("chunks") == 0:
        raise ValueError("scarlet: the corpus has no chunks after ingest (empty or all rejected: see rejects/)")
    pool = load_pool(sc.tasks_file)
    tasks = list(load_pool(sc.tasks_file, sc.tasks).values())
    if isinstance(sc.seed_tasks, list):
        load_pool(sc.tasks_file, sc.seed_tasks)  # unknown names fail here, before any work
    index_run_chunks(run, sc.embedder, sc.index, actors=sc.embed_actors)
    seeds(run, cfg, pool, limit)
    seed_entities(run, cfg)
    if sc.kg.kind == "corpus":
        corpus_mentions(run, cfg)
    expand(run, cfg)
    contexts(run, cfg)
    synthesize(run, cfg, tasks)
    judge(run, cfg, pool)
    noise(run, cfg)
    attribute(run, cfg, pool)
    lists(run, cfg, pool)
