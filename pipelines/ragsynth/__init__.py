"""RAGSynth (Shen et al., 2025): robust retriever and faithful generator data from a corpus.

Read top to bottom like the paper's figure; every arrow is a stage with its funnel in the
manifest and its dropped rows in ``rejects/<stage>/``:

    chunks ──clues──▶ facts citing sentences (M2) ──qa──▶ single-hop QA (M1) ──cite──▶ ragsynth_single
    clues ──NER + LLM entities──▶ entities/ (canonical ids) ──graph──▶ bridges of 2-4 clues
          + relations between the bridged entities as clues
          ──multihop──▶ QA over several documents ──cite (facts answer if the LLM's fails)──▶
          ──single-document check──▶ ragsynth_multihop
    base questions ──rewrite (5 transformations)──▶ ──equivalence judge──▶ ragsynth_rewrites
    base questions on p documents ──partial answers (LLM, template fallback) for each proper subset
          + refusal──▶ ragsynth_variants
    all of them, with their criteria (rubric) ──▶ examples/
    ──▶ retrieval_lists/ (mined negatives), exports/beir/, exports/sft_ragsynth.jsonl

Each part is switchable and capped under ``ragsynth:`` in the config. The pieces live in
``singlehop``, ``multihop``, ``variants`` and ``export`` beside this file, the settings in
``config``; this module only wires them into the shared stages (``pipelines/stages/stage.py``).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Callable

import pyarrow as pa

from actors.llm import llm_map
from pipelines.core.groups import group_map
from pipelines.core.run import KEEP, Run
from pipelines.core.schema import EXAMPLES, RETRIEVAL_LISTS, stable_id, staging
from pipelines.ragsynth import export
from pipelines.ragsynth import multihop as mh
from pipelines.ragsynth import singlehop as sh
from pipelines.ragsynth import variants as var
from pipelines.stages.quality import seed_chunks
from pipelines.stages.stage import answer_sources, build_stage, llm_stage, no_rows
from pipelines.stages.stage import fingerprints as _fp

if TYPE_CHECKING:
    from pipelines.registry import RunConfig


# ----------------------------------------------------------------------------- helpers
def _union(run: Run, tables: list[str]):
    parts = [run.read(t) for t in tables if run.count(t)]
    if not parts:
        return None
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _empty_examples() -> pa.Table:
    return staging(EXAMPLES).empty_table()


# ----------------------------------------------------------------------------- single-hop
def clues_and_single_hop(run: Run, cfg: RunConfig, limit: int | None) -> None:
    rs = cfg.ragsynth.resolved(cfg.llm.small)

    def chunks():
        wanted = set(seed_chunks(run, limit, cfg.seed))
        ds = run.read("chunks").filter(lambda r: r["chunk_id"] in wanted)
        return ds.map_batches(sh.clue_inputs, batch_format="pyarrow",
                              fn_kwargs={"max_sentences": rs.max_sentences_per_chunk, "max_clues": rs.max_clues,
                                         "min_support": rs.min_support})

    clue_cfg = {k: getattr(rs, k) for k in ("max_clues", "min_support", "max_sentences_per_chunk", "clues")}
    if rs.clues == "sentences":
        build_stage(run, "ragsynth_clues", ["quality"],
                    lambda: chunks().map_batches(sh.sentence_clues, batch_format="pyarrow",
                                                 fn_kwargs={"max_clues": rs.max_clues, "min_words": rs.clue_min_words}),
                    "ragsynth_clues", schema=None, extra_fp=(limit, cfg.seed, clue_cfg, rs.clue_min_words))
    else:
        llm_stage(run, cfg, "ragsynth_clues", ["quality"], chunks, "chunk_id", "ragsynth/clues", "ragsynth_clues",
                  check=sh.check_clues, extra_fp=(limit, cfg.seed, clue_cfg))
    if not rs.single_hop:
        return
    if rs.single_hop_answer == "facts":  # the LLM writes the question; the clue is the answer
        llm_stage(run, cfg, "ragsynth_qa", ["ragsynth_clues"],
                  lambda: run.read("ragsynth_clues").map_batches(sh.question_inputs, batch_format="pyarrow"),
                  "chunk_id", "ragsynth/qa_question", "ragsynth_qa", check=sh.check_question, extra_fp=("facts",))
    else:
        llm_stage(run, cfg, "ragsynth_qa", ["ragsynth_clues"],
                  lambda: run.read("ragsynth_clues").map_batches(sh.qa_inputs, batch_format="pyarrow"),
                  "chunk_id", "ragsynth/qa", "ragsynth_qa", check=sh.check_qa)
    build_stage(run, "ragsynth_cite", ["ragsynth_qa"],
                lambda: run.read("ragsynth_qa").map_batches(sh.build_examples, batch_format="pyarrow",
                                                            fn_kwargs={"min_support": rs.min_support}),
                "ragsynth_single", extra_fp=(rs.min_support,),
                report=lambda: {"answer_source": answer_sources(run, "ragsynth_single")})


# ----------------------------------------------------------------------------- multi-hop
def multi_hop(run: Run, cfg: RunConfig) -> None:
    import ray

    from actors.ner import NER

    m, rs = cfg.ragsynth.multihop, cfg.ragsynth

    def sentences():
        chunk_ids = set(run.read_arrow("ragsynth_clues", columns=["chunk_id"]).column(0).to_pylist())
        ds = run.read("sentences", columns=["sentence_id", "chunk_id", "doc_id", "text"])
        ds = ds.filter(lambda r: r["chunk_id"] in chunk_ids)
        ds = ds.map_batches(NER, fn_constructor_kwargs={"labels": m.ner_labels}, batch_size=256,
                            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2),
                            num_cpus=1)
        return ds.map_batches(_with_keep, batch_format="pyarrow")

    build_stage(run, "ragsynth_ner", ["ragsynth_clues"], sentences, "ragsynth_mentions", schema=None,
                extra_fp=(m.ner_labels,))
    upstream = ["ragsynth_clues", "ragsynth_ner"]
    if m.llm_entities:
        llm_stage(run, cfg, "ragsynth_entities_llm", ["ragsynth_clues"],
                  lambda: run.read("ragsynth_clues").map_batches(mh.entity_inputs, batch_format="pyarrow"),
                  "chunk_id", "ragsynth/entities", "ragsynth_llm_entities", check=mh.check_entities)
        upstream.append("ragsynth_entities_llm")

    with run.stage("ragsynth_entities", *_fp(run, *upstream), m.similarity, m.confirm_with_llm, m.sentence_clues,
                   cfg.ragsynth.export.embedder.model_dump()) as rec:
        if rec is not None:
            table, stats = _resolve_entities(run, cfg, with_llm=m.llm_entities)
            run.commit(rec, table, table="entities", schema=mh.ENTITIES)
            rec.extra.update(stats)

    with run.stage("ragsynth_bridges", *_fp(run, "ragsynth_entities"), m.hops, m.max_questions, m.max_per_clue,
                   m.max_entity_degree, m.sentence_clues, cfg.seed, m.relations and m.llm_entities, m.max_relations,
                   rs.min_support) as rec:
        if rec is not None:
            table, stats = _bridges(run, cfg)
            run.commit(rec, table, table="ragsynth_bridges")
            rec.extra.update(stats)

    # the LLM stage checks the question only: a written answer is verified when its citations are
    # composed (ragsynth_multihop_cite), where one that fails falls back to the facts answer
    prompt = "ragsynth/multihop_question" if m.answer == "facts" else "ragsynth/multihop"
    llm_stage(run, cfg, "ragsynth_multihop", ["ragsynth_bridges"], lambda: run.read("ragsynth_bridges"),
              "bridge_id", prompt, "ragsynth_multihop_qa", check=mh.check_question, extra_fp=(m.answer,))
    build_stage(run, "ragsynth_multihop_cite", ["ragsynth_multihop"],
                lambda: run.read("ragsynth_multihop_qa").map_batches(mh.build_candidates, batch_format="pyarrow",
                                                                      fn_kwargs={"min_support": rs.min_support}),
                "ragsynth_multihop_candidates", extra_fp=(rs.min_support,),
                report=lambda: _answer_report(run, "ragsynth_multihop_candidates"))

    if not m.single_doc_check:
        build_stage(run, "ragsynth_single_doc", ["ragsynth_multihop_cite"],
                    lambda: _or_empty(run, "ragsynth_multihop_candidates"), "ragsynth_multihop")
        return
    prompt = {"question-likelihood": "ragsynth/question_likelihood", "answer-likelihood": "ragsynth/answer_likelihood",
              "yes-no": "ragsynth/answerable_judge"}[m.single_doc_judge]
    llm_stage(run, cfg, "ragsynth_single_doc_scores", ["ragsynth_multihop_cite"],
              lambda: _read_or_empty(run, "ragsynth_multihop_candidates").map_batches(mh.single_doc_rows,
                                                                                     batch_format="pyarrow"),
              "score_key", prompt, "ragsynth_single_doc_scores", extra_fp=(m.single_doc_judge,))
    build_stage(run, "ragsynth_single_doc", ["ragsynth_single_doc_scores"],
                lambda: _grouped(run, "ragsynth_single_doc_scores", "example_id", mh.decide_single_doc,
                                 judge=m.single_doc_judge, margin=m.single_doc_margin, threshold=m.judge_threshold),
                "ragsynth_multihop", extra_fp=(m.single_doc_margin, m.judge_threshold))


def _answer_report(run: Run, table: str) -> dict:
    """The manifest's figures of a stage that may fall back: rows per answer source, and the
    reasons the model's answers fell back."""
    metas = run.read_arrow(table, columns=["meta"]).column(0).to_pylist() if run.count(table) else []
    fallbacks = (json.loads(m or "{}").get("answer_fallback") for m in metas)
    reasons = Counter(fb["reason"] for fb in fallbacks if fb)
    return {"answer_source": answer_sources(run, table), "answer_fallback": dict(sorted(reasons.items()))}


def _with_keep(b: pa.Table) -> pa.Table:
    for k in KEEP:
        b = b.append_column(k, pa.nulls(b.num_rows, pa.string()))
    return b


def _read_or_empty(run: Run, table: str):
    import ray.data

    return run.read(table) if run.count(table) else ray.data.from_arrow(staging(EXAMPLES).empty_table())


def _or_empty(run: Run, table: str):
    if not run.count(table):
        return _empty_examples()
    return run.read(table).map_batches(_drop_contexts, batch_format="pyarrow")


def _drop_contexts(b: pa.Table) -> pa.Table:
    rows = b.to_pylist()
    for r in rows:
        meta = json.loads(r["meta"])
        meta.pop("contexts", None)
        r["meta"] = json.dumps(meta, ensure_ascii=False, sort_keys=True)
        r.setdefault("reject_reason", None)
        r.setdefault("reject_detail", None)
    return pa.Table.from_pylist(rows, schema=staging(EXAMPLES))


def _grouped(run: Run, table: str, key: str, fn: Callable, **kwargs):
    n = run.count(table)
    if not n:
        return _empty_examples()
    return group_map(run.read(table), key, fn, n_rows=n, fn_kwargs=kwargs)


def _clues(run: Run, cfg: RunConfig) -> list[dict]:
    """The LLM's clues and, with ``multihop.sentence_clues``, every sentence that names an
    entity and that no clue cites yet (a sentence is a fact verbatim: M2 holds exactly)."""
    out = []
    for r in run.read_arrow("ragsynth_clues").to_pylist():
        out += sh.clue_records(r)
    if cfg.ragsynth.multihop.sentence_clues and run.count("ragsynth_mentions"):
        cited = {s for c in out for s in c["sentence_ids"]}
        for r in run.read_arrow("ragsynth_mentions").to_pylist():
            if r["mentions"] and r["sentence_id"] not in cited and len(r["text"].split()) >= 5:
                out.append({"clue_id": f"{r['sentence_id']}/s", "chunk_id": r["chunk_id"], "doc_id": r["doc_id"],
                            "text": r["text"].strip(), "sentence_ids": [r["sentence_id"]], "sentences": [r["text"]]})
    return out


def _resolve_entities(run: Run, cfg: RunConfig, *, with_llm: bool) -> tuple[pa.Table, dict]:
    """Surface forms from NER and the LLM, unioned by name, alias and name-embedding
    similarity (optionally confirmed by the LLM) into canonical entities."""
    from actors.embedder import encode_texts, load_model
    from pipelines.stages.entities import alias_pairs, resolve, similar_pairs

    m = cfg.ragsynth.multihop
    ner = run.read_arrow("ragsynth_mentions").to_pylist()
    llm = run.read_arrow("ragsynth_llm_entities").to_pylist() if with_llm else []
    found = mh.collect_mentions(ner, llm, _clues(run, cfg))
    forms = found["forms"]
    keys = sorted(forms)
    links = alias_pairs(keys)
    stats = {"forms": len(keys), "alias_links": len(links)}
    if len(keys) > 1:
        emb = cfg.ragsynth.export.embedder
        model = load_model(emb.model, device=emb.device)
        display = [max(forms[k]["names"], key=forms[k]["names"].get) for k in keys]
        vecs = encode_texts(display, kind="passage", settings=emb, model=model)
        similar = similar_pairs(keys, vecs, m.similarity)
        stats["similar_pairs"] = len(similar)
        if m.confirm_with_llm and similar:
            similar = _confirm_merges(cfg, similar, forms)
            stats["confirmed_pairs"] = len(similar)
        links += [(a, b) for a, b, _ in similar]
    canonical = resolve({k: len(forms[k]["mentions"]) for k in keys}, links)
    stats["canonical_entities"] = len(set(canonical.values()))
    rows = [{**r, **KEEP} for r in mh.entity_rows(forms, canonical)]
    return pa.Table.from_pylist(rows, schema=staging(mh.ENTITIES)), stats


def _confirm_merges(cfg: RunConfig, similar: list, forms: dict) -> list:
    import ray.data

    from pipelines.stages.judge import yes_probability

    rows = [{"pair": i, "a": max(forms[a]["names"], key=forms[a]["names"].get),
             "b": max(forms[b]["names"], key=forms[b]["names"].get), "label": a[0],
             "a_context": a[1], "b_context": b[1]} for i, (a, b, _) in enumerate(similar)]
    out = llm_map(ray.data.from_items(rows), llm=cfg.llm, prompt="ragsynth/same_entity",
                  stage="ragsynth_entities", prompt_search=cfg.prompt_search()).take_all()
    ok = {r["pair"] for r in out if r["llm_output"]
          and yes_probability(json.loads(r["llm_output"])) >= cfg.ragsynth.multihop.judge_threshold}
    return [p for i, p in enumerate(similar) if i in ok]


def _bridges(run: Run, cfg: RunConfig) -> tuple[pa.Table, dict]:
    """Clue graph over canonical entities, and seeded bridges along it."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from pipelines.stages.entities import clue_graph, normalise_name, sample_bridges

    m = cfg.ragsynth.multihop
    clues = _clues(run, cfg)
    ents = run.read_arrow("entities").to_pylist()
    by_sentence: dict[str, set] = {}
    names: dict[str, str] = {}
    for e in ents:
        names.setdefault(e["canonical_id"], e["name"])
        for ref in e["mentions"]:
            by_sentence.setdefault(ref["sentence_id"], set()).add(e["canonical_id"])
    for c in clues:
        c["entities"] = sorted({e for s in c["sentence_ids"] for e in by_sentence.get(s, ())})
    graph = clue_graph(clues, m.max_entity_degree)
    paths = sample_bridges(graph, m.hops, m.max_questions, seed=cfg.seed, max_per_clue=m.max_per_clue)
    by_id = {c["clue_id"]: c for c in clues}
    chunk_ids = sorted({by_id[x]["chunk_id"] for p in paths for x in p})
    texts = {}
    if chunk_ids:
        t = pads.dataset(run.path("chunks"), format="parquet").to_table(
            columns=["chunk_id", "text"], filter=pc.field("chunk_id").isin(chunk_ids))
        texts = dict(zip(t.column(0).to_pylist(), t.column(1).to_pylist()))
    relations, canonical_of = [], {}
    if m.relations and m.llm_entities and m.max_relations and run.count("ragsynth_llm_entities"):
        llm_rows = run.read_arrow("ragsynth_llm_entities", columns=["clue_json", "llm_output"]).to_pylist()
        relations = mh.relation_clues(llm_rows, cfg.ragsynth.min_support)
        for e in ents:
            canonical_of.setdefault(normalise_name(e["name"]), set()).add(e["canonical_id"])
    rows = mh.bridge_rows(paths, by_id, graph, names, texts, relations, canonical_of, m.max_relations)
    stats = {"graph": {"clues": graph.number_of_nodes(), "edges": graph.number_of_edges(),
                       "linked_clues": sum(1 for n in graph.nodes if graph.degree(n)),
                       "documents": len({c["doc_id"] for c in clues})},
             "hops": {str(h): sum(1 for p in paths if len(p) == h) for h in sorted(set(map(len, paths)))}}
    if rows:
        stats["relation_clues"] = {"extracted": len(relations),
                                   "in_bridges": sum(k == "relation" for r in rows for k in r["fact_kinds"])}
    table = pa.Table.from_pylist([{**r, **KEEP} for r in rows]) if rows else no_rows("bridge_id")
    return table, stats


# ----------------------------------------------------------------------------- rewrites and variants
def _bases(run: Run, parts: list[str], cap: int | None, seed: int):
    ds = _union(run, parts)
    if ds is None or cap is None:
        return ds
    ids = []
    for t in parts:
        if run.count(t):
            ids += run.read_arrow(t, columns=["example_id"]).column(0).to_pylist()
    keep = set(sorted(ids, key=lambda i: stable_id(seed, i))[:cap])
    return ds.filter(lambda r: r["example_id"] in keep)


def rewrites(run: Run, cfg: RunConfig, parts: list[str]) -> None:
    rw = cfg.ragsynth.rewrites

    def rows():
        ds = _bases(run, parts, rw.max_questions, cfg.seed)
        return (ds if ds is not None else _read_or_empty(run, parts[0])).map_batches(
            var.rewrite_rows, batch_format="pyarrow",
            fn_kwargs={"kinds": rw.kinds, "per_question": rw.per_question, "seed": cfg.seed})

    llm_stage(run, cfg, "ragsynth_rewrite", parts_stages(run, parts), rows, "rewrite_key",
              {k: f"ragsynth/rewrite_{k}" for k in rw.kinds}, "ragsynth_rewrite_qa", check=var.check_rewrite,
              prompt_key="rewrite_kind", extra_fp=(rw.kinds, rw.per_question, rw.max_questions, cfg.seed))
    prompt = "ragsynth/answer_likelihood" if rw.judge == "likelihood" else "ragsynth/equivalent_judge"
    llm_stage(run, cfg, "ragsynth_rewrite_scores", ["ragsynth_rewrite"],
              lambda: _read_rows(run, "ragsynth_rewrite_qa", "rewrite_key").map_batches(
                  var.judge_rows, batch_format="pyarrow", fn_kwargs={"judge": rw.judge}),
              "score_key", prompt, "ragsynth_rewrite_scores", extra_fp=(rw.judge,))
    build_stage(run, "ragsynth_rewrite_judge", ["ragsynth_rewrite_scores"],
                lambda: _grouped(run, "ragsynth_rewrite_scores", "rewrite_key", var.decide_rewrite,
                                 judge=rw.judge, margin=rw.margin, threshold=rw.judge_threshold),
                "ragsynth_rewrites", extra_fp=(rw.margin, rw.judge_threshold))


def completeness_variants(run: Run, cfg: RunConfig, parts: list[str]) -> None:
    v, rs = cfg.ragsynth.variants, cfg.ragsynth

    def partial():
        ds = _union(run, parts) or _read_or_empty(run, parts[0])
        return ds.map_batches(var.partial_rows, batch_format="pyarrow",
                              fn_kwargs={"cap": v.max_per_question, "run_root": str(run.root),
                                         "min_support": rs.min_support})

    upstream = []
    if v.partial_questions:
        llm_stage(run, cfg, "ragsynth_variants", parts_stages(run, parts), partial, "variant_key",
                  "ragsynth/partial_question", "ragsynth_variant_qa", check=mh.check_question,
                  extra_fp=(v.max_per_question,))
        upstream.append("ragsynth_variants")
    if v.answer == "model":  # one call per partial variant; a rejected reply falls back to the template
        llm_stage(run, cfg, "ragsynth_variant_answers", parts_stages(run, parts), partial, "variant_key",
                  "ragsynth/partial_answer", "ragsynth_variant_answers", check=var.check_partial_answer,
                  extra_fp=(v.max_per_question, rs.min_support))
        upstream.append("ragsynth_variant_answers")
    upstream = upstream or parts_stages(run, parts)

    def build():
        found = []
        if any(run.count(p) for p in parts):
            found.append(partial().map_batches(var.partial_examples, batch_format="pyarrow",
                                               fn_kwargs={"min_support": rs.min_support, "missing_text": v.missing_text,
                                                          "run_root": str(run.root)}))
            if v.refusal:
                found.append(_union(run, parts).map_batches(var.refusal_examples, batch_format="pyarrow",
                                                            fn_kwargs={"text": v.refusal_text}))
        if not found:
            return _empty_examples()
        return found[0].union(*found[1:]) if len(found) > 1 else found[0]

    build_stage(run, "ragsynth_variant_build", upstream, build, "ragsynth_variants",
                extra_fp=(v.max_per_question, v.refusal, v.refusal_text, v.missing_text, rs.min_support, v.answer,
                          parts_stages(run, parts), _fp(run, *parts_stages(run, parts))),
                report=lambda: _answer_report(run, "ragsynth_variants"))


def _read_rows(run: Run, table: str, key: str):
    import ray.data

    return run.read(table) if run.count(table) else ray.data.from_arrow(pa.table({key: pa.array([], pa.string())}))


PART_STAGE = {"ragsynth_single": "ragsynth_cite", "ragsynth_multihop": "ragsynth_single_doc",
              "ragsynth_rewrites": "ragsynth_rewrite_judge", "ragsynth_variants": "ragsynth_variant_build"}


def parts_stages(run: Run, parts: list[str]) -> list[str]:
    return [PART_STAGE[p] for p in parts]


# ----------------------------------------------------------------------------- assemble and export
def assemble(run: Run, parts: list[str]) -> None:
    """Every kept example of every part, with its criteria, into ``examples/``; then the
    citations are checked again, independently, against ``sentences/``."""
    with run.stage("ragsynth_examples", *_fp(run, *parts_stages(run, parts))) as rec:
        if rec is not None:
            ds = _union(run, parts)
            if ds is None:
                run.commit(rec, _empty_examples(), table="examples", schema=EXAMPLES)
            else:
                run.commit(rec, ds.map_batches(_with_keep, batch_format="pyarrow"), table="examples", schema=EXAMPLES)
            rec.extra["citations_checked"] = verify_citations(run)
            rec.extra["by_kind"] = _by_kind(run)
            rec.extra["answer_source"] = answer_sources(run, "examples", by=("task", "variant_kind"))
    run.export_jsonl("examples", "examples.jsonl")


def _by_kind(run: Run) -> dict[str, int]:
    t = run.read_arrow("examples", columns=["task", "variant_kind"]).to_pylist()
    out: dict[str, int] = {}
    for r in t:
        k = f"{r['task']}/{r['variant_kind'] or 'full'}"
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items()))


def verify_citations(run: Run) -> dict[str, int]:
    """Independent check of the written examples: every cited pair exists in sentences/."""
    import pyarrow.dataset as pads

    ex = run.read_arrow("examples", columns=["citations"])
    cited = {(c["chunk_id"], c["sentence_id"]) for cs in ex.column("citations").to_pylist() for c in cs}
    if not cited:
        return {"cited": 0, "missing": 0}
    found = set()
    chunk_ids = pa.array(sorted({c for c, _ in cited}))
    scan = pads.dataset(run.path("sentences"), format="parquet").to_batches(
        columns=["chunk_id", "sentence_id"], filter=pads.field("chunk_id").isin(chunk_ids))
    for b in scan:
        found.update(zip(b.column(0).to_pylist(), b.column(1).to_pylist()))
    return {"cited": len(cited), "missing": len(cited - found)}


def exports(run: Run, cfg: RunConfig) -> None:
    """Retrieval lists + BEIR folder (stage ``ragsynth_lists``), SFT records, reference answers."""
    from pipelines.stages.index import index_run_chunks

    ex_cfg = cfg.ragsynth.export
    examples = run.read_arrow("examples").to_pylist()
    if not (ex_cfg.lists or ex_cfg.sft) or not examples:
        return
    index_run_chunks(run, ex_cfg.embedder, ex_cfg.index)
    queries = export.retrieval_queries(examples)
    if ex_cfg.lists:
        with run.stage("ragsynth_lists", *_fp(run, "ragsynth_examples", "index"), ex_cfg.negatives,
                       ex_cfg.mining.model_dump()) as rec:
            if rec is not None:
                negs = export.mine(run, queries, ex_cfg)
                rows = [{**r, **KEEP} for r in export.lists_rows(queries, negs, ex_cfg.negatives)]
                table = pa.Table.from_pylist(rows, schema=staging(RETRIEVAL_LISTS))
                run.commit(rec, table, table="retrieval_lists", schema=RETRIEVAL_LISTS)
                rec.extra["queries"] = {t: sum(1 for q in queries if q["query_type"] == t)
                                        for t in ("original", "rewrite", "partial")}
                export.write_beir(run, queries)
    if ex_cfg.sft:
        distractors: dict[str, list[str]] = {}
        if ex_cfg.sft_distractors:
            bases = [q for q in queries if q["query_type"] == "original"]
            for q, negs in zip(bases, export.mine(run, bases, ex_cfg)):
                distractors[q["example_id"]] = negs[:ex_cfg.sft_distractors]
        path, counts = export.write_sft(run, examples, distractors, cfg.seed)
        run.manifest.setdefault("exports", {})["sft_ragsynth"] = {"path": str(path), "records": counts}
    export.write_reference_answers(run, examples)


# ----------------------------------------------------------------------------- the method
def ragsynth(run: Run, cfg: RunConfig, *, limit: int | None) -> None:
    """The whole method; each part is switched and capped under ``ragsynth:``."""
    rs = cfg.ragsynth
    clues_and_single_hop(run, cfg, limit)
    parts = ["ragsynth_single"] if rs.single_hop else []
    if rs.multihop.enabled:
        multi_hop(run, cfg)
        parts.append("ragsynth_multihop")
    bases = list(parts)
    if bases and rs.rewrites.enabled and rs.rewrites.per_question:
        rewrites(run, cfg, bases)
        parts.append("ragsynth_rewrites")
    if bases and rs.variants.enabled:
        completeness_variants(run, cfg, bases)
        parts.append("ragsynth_variants")
    assemble(run, parts)
    exports(run, cfg)

